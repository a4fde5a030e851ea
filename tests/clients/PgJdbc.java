// Probe: pgjdbc (Debian's libpostgresql-jdbc-java, /usr/share/java/postgresql.jar).
//
// Build and run (no build tool):
//   javac -d /tmp/pgjdbc-probe -cp /usr/share/java/postgresql.jar tests/clients/PgJdbc.java
//   java -cp /usr/share/java/postgresql.jar:/tmp/pgjdbc-probe PgJdbc
//
// Connection from PGHOST, PGPORT, PGUSER, PGPASSWORD (empty = none), PGDATABASE.
// pgjdbc sends every statement through Parse/Bind/Execute (BEGIN and COMMIT too)
// and, after prepareThreshold (5) executions, switches to named S_n statements
// with binary parameters and results. The whole set of checks runs twice: with
// autocommit on and with autocommit off.

import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Types;
import java.time.LocalDate;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.TreeSet;

public class PgJdbc {
    static final String[] NATIONS = {
        "ALGERIA", "ARGENTINA", "BRAZIL", "CANADA", "EGYPT", "ETHIOPIA", "FRANCE",
        "GERMANY", "INDIA", "INDONESIA", "IRAN", "IRAQ", "JAPAN", "JORDAN", "KENYA",
        "MOROCCO", "MOZAMBIQUE", "PERU", "CHINA", "ROMANIA", "SAUDI ARABIA",
        "VIETNAM", "RUSSIA", "UNITED KINGDOM", "UNITED STATES"};
    static final List<String> TPCH_TABLES = Arrays.asList(
        "customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier");
    static final String[] LINEITEM_COLUMNS = {
        "l_orderkey", "l_partkey", "l_suppkey", "l_linenumber", "l_quantity",
        "l_extendedprice", "l_discount", "l_tax", "l_returnflag", "l_linestatus",
        "l_shipdate", "l_commitdate", "l_receiptdate", "l_shipinstruct", "l_shipmode", "l_comment"};
    // java.sql.Types per column, per the Flotilla contract (text -> VARCHAR in pgjdbc).
    static final int[] LINEITEM_TYPES = {
        Types.BIGINT, Types.BIGINT, Types.BIGINT, Types.INTEGER, Types.NUMERIC,
        Types.NUMERIC, Types.NUMERIC, Types.NUMERIC, Types.VARCHAR, Types.VARCHAR,
        Types.DATE, Types.DATE, Types.DATE, Types.VARCHAR, Types.VARCHAR, Types.VARCHAR};
    static final BigDecimal ORDER1_SUM_QTY = new BigDecimal("145.00");
    static final LocalDate ORDER1_MIN_SHIPDATE = LocalDate.of(1996, 1, 29);

    static int passed = 0;
    static int failed = 0;
    static volatile String current = null;
    static volatile long deadline = 0; // System.nanoTime() deadline, 0 = none

    interface Check {
        void run(Connection c) throws Exception;
    }

    static String env(String name, String dflt) {
        String v = System.getenv(name);
        return (v == null || v.isEmpty()) ? dflt : v;
    }

    static Connection connect() throws SQLException {
        String url = "jdbc:postgresql://" + env("PGHOST", "127.0.0.1") + ":" + env("PGPORT", "5432")
            + "/" + env("PGDATABASE", "flotilla");
        Properties p = new Properties();
        p.setProperty("user", env("PGUSER", System.getProperty("user.name")));
        String pw = env("PGPASSWORD", null);
        if (pw != null) {
            p.setProperty("password", pw);
        }
        p.setProperty("connectTimeout", "10");
        p.setProperty("ApplicationName", "flotilla-pgjdbc-probe");
        return DriverManager.getConnection(url, p);
    }

    static void fail(String msg) {
        throw new AssertionError(msg);
    }

    static void expectEq(Object actual, Object expected, String what) {
        if (expected == null ? actual != null : !expected.equals(actual)) {
            fail(what + ": expected " + expected + ", got " + actual);
        }
    }

    static void expectTrue(boolean cond, String msg) {
        if (!cond) {
            fail(msg);
        }
    }

    static String oneLine(Throwable t) {
        String m = t.getMessage();
        if (t instanceof SQLException) {
            m = "[" + ((SQLException) t).getSQLState() + "] " + m;
        }
        return t.getClass().getSimpleName() + ": " + (m == null ? "" : m.replaceAll("\\s*\\n\\s*", " | "));
    }

    static synchronized void report(String name, Throwable err) {
        deadline = 0;
        if (err == null) {
            passed++;
            System.out.println("ok - " + name);
        } else {
            failed++;
            System.out.println("FAIL - " + name + ": " + oneLine(err));
        }
        System.out.flush();
    }

    static boolean check(String name, Connection conn, Check fn) {
        current = name;
        deadline = System.nanoTime() + (long) (checkTimeoutSeconds() * 1e9);
        Throwable err = null;
        try {
            fn.run(conn);
        } catch (Throwable t) {
            err = t;
        }
        report(name, err);
        if (err != null && conn != null) {
            try {
                if (!conn.isClosed() && !conn.getAutoCommit()) {
                    conn.rollback();
                }
            } catch (SQLException ignored) {
                // the next check reports whatever is wrong with the connection
            }
        }
        return err == null;
    }

    static double checkTimeoutSeconds() {
        try {
            return Double.parseDouble(env("PROBE_CHECK_TIMEOUT", "120"));
        } catch (NumberFormatException e) {
            return 120;
        }
    }

    static void startWatchdog() {
        Thread t = new Thread(() -> {
            while (true) {
                try {
                    Thread.sleep(500);
                } catch (InterruptedException e) {
                    return;
                }
                long d = deadline;
                if (d != 0 && System.nanoTime() > d) {
                    synchronized (PgJdbc.class) {
                        System.out.println("FAIL - " + current + ": timed out (PROBE_CHECK_TIMEOUT)");
                        System.out.println(passed + " passed, " + (failed + 1) + " failed");
                        System.out.flush();
                        Runtime.getRuntime().halt(1);
                    }
                }
            }
        });
        t.setDaemon(true);
        t.start();
    }

    // ---- checks ----

    static void checkSelect1(Connection c) throws Exception {
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SELECT 1")) {
            expectTrue(rs.next(), "no row");
            expectEq(rs.getInt(1), 1, "SELECT 1");
            expectTrue(!rs.next(), "more than one row");
        }
        DatabaseMetaData md = c.getMetaData();
        expectEq(md.getDatabaseProductName(), "PostgreSQL", "product name");
        expectTrue(md.getDatabaseMajorVersion() >= 10,
            "major version should be >= 10, got " + md.getDatabaseMajorVersion());
        if (!c.getAutoCommit()) {
            c.commit();
        }
    }

    static void checkCatalogs(Connection c) throws Exception {
        List<String> cats = new ArrayList<>();
        try (ResultSet rs = c.getMetaData().getCatalogs()) {
            while (rs.next()) {
                cats.add(rs.getString("TABLE_CAT"));
            }
        }
        String db = env("PGDATABASE", "flotilla");
        expectTrue(cats.contains(db), "getCatalogs() " + cats + " lacks " + db);
        expectEq(c.getCatalog(), db, "Connection.getCatalog()");
    }

    static void checkSchemas(Connection c) throws Exception {
        List<String> schemas = new ArrayList<>();
        try (ResultSet rs = c.getMetaData().getSchemas()) {
            while (rs.next()) {
                schemas.add(rs.getString("TABLE_SCHEM"));
            }
        }
        expectTrue(schemas.contains("public"), "getSchemas() " + schemas + " lacks public");
        expectEq(c.getSchema(), "public", "Connection.getSchema()");
    }

    static void checkTables(Connection c) throws Exception {
        TreeSet<String> names = new TreeSet<>();
        try (ResultSet rs = c.getMetaData().getTables(null, "public", "%", new String[] {"TABLE"})) {
            while (rs.next()) {
                names.add(rs.getString("TABLE_NAME"));
                expectEq(rs.getString("TABLE_SCHEM"), "public", "TABLE_SCHEM");
                expectEq(rs.getString("TABLE_TYPE"), "TABLE", "TABLE_TYPE of " + rs.getString("TABLE_NAME"));
            }
        }
        expectEq(new ArrayList<>(names), TPCH_TABLES, "getTables(public, TABLE)");
    }

    static void checkColumns(Connection c) throws Exception {
        Map<Integer, String> byPos = new TreeMap<>();
        Map<String, Integer> types = new TreeMap<>();
        try (ResultSet rs = c.getMetaData().getColumns(null, "public", "lineitem", "%")) {
            while (rs.next()) {
                String name = rs.getString("COLUMN_NAME");
                byPos.put(rs.getInt("ORDINAL_POSITION"), name);
                types.put(name, rs.getInt("DATA_TYPE"));
                expectEq(rs.getString("TABLE_NAME"), "lineitem", "TABLE_NAME");
            }
        }
        expectEq(new ArrayList<>(byPos.values()), Arrays.asList(LINEITEM_COLUMNS), "columns in ORDINAL_POSITION order");
        for (int i = 0; i < LINEITEM_COLUMNS.length; i++) {
            expectEq(types.get(LINEITEM_COLUMNS[i]), LINEITEM_TYPES[i], "DATA_TYPE of " + LINEITEM_COLUMNS[i]);
        }
    }

    static void checkNumericColumn(Connection c) throws Exception {
        try (ResultSet rs = c.getMetaData().getColumns(null, "public", "lineitem", "l_quantity")) {
            expectTrue(rs.next(), "no row for l_quantity");
            expectEq(rs.getString("TYPE_NAME"), "numeric", "TYPE_NAME");
            expectEq(rs.getInt("COLUMN_SIZE"), 15, "COLUMN_SIZE");
            expectEq(rs.getInt("DECIMAL_DIGITS"), 2, "DECIMAL_DIGITS");
            expectTrue(!rs.next(), "more than one row for l_quantity");
        }
    }

    static void checkPrimaryKeys(Connection c) throws Exception {
        int n = 0;
        try (ResultSet rs = c.getMetaData().getPrimaryKeys(null, "public", "nation")) {
            while (rs.next()) {
                n++;
                expectEq(rs.getString("TABLE_NAME"), "nation", "TABLE_NAME");
            }
        }
        expectTrue(n <= 1, "nation has at most a one-column key, got " + n + " rows");
    }

    static void checkTypeInfo(Connection c) throws Exception {
        int n = 0;
        try (ResultSet rs = c.getMetaData().getTypeInfo()) {
            while (rs.next()) {
                n++;
                expectTrue(rs.getString("TYPE_NAME") != null, "TYPE_NAME is null");
            }
        }
        expectTrue(n > 0, "getTypeInfo() returned no rows");
    }

    static void checkPreparedRepeated(Connection c) throws Exception {
        int[] keys = {7, 0, 24, 3, 12, 18, 21, 7, 1, 23};
        try (PreparedStatement ps = c.prepareStatement("SELECT n_name FROM nation WHERE n_nationkey = ?")) {
            for (int i = 0; i < keys.length; i++) {
                ps.setInt(1, keys[i]);
                try (ResultSet rs = ps.executeQuery()) {
                    expectTrue(rs.next(), "no row for key " + keys[i] + " (execution " + (i + 1) + ")");
                    expectEq(rs.getString(1), NATIONS[keys[i]], "execution " + (i + 1) + " key " + keys[i]);
                    expectTrue(!rs.next(), "more than one row for key " + keys[i]);
                }
            }
            boolean serverPrepared = ps.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare();
            expectTrue(serverPrepared, "statement did not switch to a server-prepared statement");
        }
        try (PreparedStatement ps = c.prepareStatement("SELECT n_nationkey FROM nation WHERE n_name = ?")) {
            for (int i = 0; i < 7; i++) {
                ps.setString(1, NATIONS[i * 3]);
                try (ResultSet rs = ps.executeQuery()) {
                    expectTrue(rs.next(), "no row for " + NATIONS[i * 3]);
                    expectEq(rs.getLong(1), (long) (i * 3), "setString " + NATIONS[i * 3]);
                }
            }
        }
        if (!c.getAutoCommit()) {
            c.commit();
        }
    }

    static void checkPreparedBinaryTypes(Connection c) throws Exception {
        String q = "SELECT sum(l_quantity), min(l_shipdate), count(*) FROM lineitem WHERE l_orderkey = ?";
        try (PreparedStatement ps = c.prepareStatement(q)) {
            for (int i = 0; i < 8; i++) {
                ps.setLong(1, 1L);
                try (ResultSet rs = ps.executeQuery()) {
                    expectTrue(rs.next(), "no row (execution " + (i + 1) + ")");
                    BigDecimal sum = rs.getBigDecimal(1);
                    expectTrue(sum != null && sum.compareTo(ORDER1_SUM_QTY) == 0,
                        "execution " + (i + 1) + " sum: expected 145.00, got " + sum);
                    expectEq(rs.getObject(2, LocalDate.class), ORDER1_MIN_SHIPDATE, "execution " + (i + 1) + " min date");
                    expectEq(rs.getLong(3), 6L, "execution " + (i + 1) + " count");
                }
            }
        }
        // a date parameter (pgjdbc binds setDate with an unspecified type OID)
        try (PreparedStatement ps = c.prepareStatement(
                "SELECT count(*) FROM lineitem WHERE l_orderkey = ? AND l_shipdate >= ?")) {
            ps.setLong(1, 1L);
            ps.setDate(2, java.sql.Date.valueOf("1996-03-01"));
            try (ResultSet rs = ps.executeQuery()) {
                expectTrue(rs.next(), "no row");
                expectEq(rs.getLong(1), 4L, "count with date parameter");
            }
        }
    }

    static void checkStatementTypes(Connection c) throws Exception {
        try (Statement st = c.createStatement();
             ResultSet rs = st.executeQuery(
                 "SELECT sum(l_quantity), min(l_shipdate), max(l_orderkey) FROM lineitem WHERE l_orderkey = 1")) {
            ResultSetMetaData md = rs.getMetaData();
            expectEq(md.getColumnType(1), Types.NUMERIC, "column 1 type");
            expectEq(md.getColumnType(2), Types.DATE, "column 2 type");
            expectEq(md.getColumnType(3), Types.BIGINT, "column 3 type");
            expectTrue(rs.next(), "no row");
            BigDecimal sum = rs.getBigDecimal(1);
            expectTrue(sum != null && sum.compareTo(ORDER1_SUM_QTY) == 0, "sum: expected 145.00, got " + sum);
            expectEq(rs.getDate(2).toLocalDate(), ORDER1_MIN_SHIPDATE, "min(l_shipdate)");
            expectEq(rs.getObject(3), 1L, "max(l_orderkey) as Long");
        }
    }

    static void checkErrorRecovery(Connection c) throws Exception {
        try (Statement st = c.createStatement()) {
            try {
                st.executeQuery("SELECT * FROM no_such_table_flotilla_probe");
                fail("query on a missing table did not raise");
            } catch (SQLException e) {
                expectEq(e.getSQLState(), "42P01", "SQLSTATE");
            }
        }
        if (!c.getAutoCommit()) {
            c.rollback();
        }
        try (PreparedStatement ps = c.prepareStatement("SELECT r_name FROM region WHERE r_regionkey = ?")) {
            ps.setInt(1, 3);
            try (ResultSet rs = ps.executeQuery()) {
                expectTrue(rs.next(), "no row after recovery");
                expectEq(rs.getString(1), "EUROPE", "query after the error");
            }
        }
        if (!c.getAutoCommit()) {
            c.commit();
        }
    }

    static void runSuite(boolean autocommit) {
        String tag = "[autocommit=" + (autocommit ? "on" : "off") + "] ";
        Connection conn = null;
        try {
            current = tag + "connect";
            deadline = System.nanoTime() + (long) (checkTimeoutSeconds() * 1e9);
            conn = connect();
            conn.setAutoCommit(autocommit);
            report(tag + "connect", null);
        } catch (Throwable t) {
            report(tag + "connect", t);
            return;
        }
        try {
            check(tag + "SELECT 1 and DatabaseMetaData product/version", conn, PgJdbc::checkSelect1);
            check(tag + "getCatalogs contains the database", conn, PgJdbc::checkCatalogs);
            check(tag + "getSchemas contains public", conn, PgJdbc::checkSchemas);
            check(tag + "getTables = 8 TPC-H tables", conn, PgJdbc::checkTables);
            check(tag + "getColumns(lineitem) names and DATA_TYPE", conn, PgJdbc::checkColumns);
            check(tag + "getColumns(l_quantity) numeric(15,2)", conn, PgJdbc::checkNumericColumn);
            check(tag + "getPrimaryKeys(nation)", conn, PgJdbc::checkPrimaryKeys);
            check(tag + "getTypeInfo non-empty", conn, PgJdbc::checkTypeInfo);
            check(tag + "PreparedStatement x10 past prepareThreshold", conn, PgJdbc::checkPreparedRepeated);
            check(tag + "PreparedStatement numeric/date results (binary) and date parameter", conn,
                PgJdbc::checkPreparedBinaryTypes);
            check(tag + "Statement BigDecimal/date/bigint results", conn, PgJdbc::checkStatementTypes);
            check(tag + "error 42P01 then recovery", conn, PgJdbc::checkErrorRecovery);
        } finally {
            try {
                if (!conn.getAutoCommit()) {
                    conn.commit();
                }
                conn.close();
            } catch (SQLException ignored) {
                // closing errors are not part of the contract
            }
        }
    }

    public static void main(String[] args) {
        startWatchdog();
        System.out.println("# pgjdbc " + org.postgresql.util.DriverInfo.DRIVER_VERSION);
        runSuite(true);
        runSuite(false);
        System.out.println(passed + " passed, " + failed + " failed");
        System.out.flush();
        System.exit(failed == 0 && passed > 0 ? 0 : 1);
    }
}
