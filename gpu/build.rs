//! Builds the kernels' CUDA source for the host, through the emulation
//! header (`emulation/cuda_emulation.h`), with the system C++ compiler: the
//! emulated device runs the very code that NVRTC compiles for GPUs.

fn main() {
    for file in [
        "emulation/cuda_emulation.h",
        "emulation/kernels.cpp",
        "kernels/common.cuh",
        "kernels/aggregate.cu",
        "kernels/join.cu",
    ] {
        println!("cargo:rerun-if-changed={file}");
    }
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .warnings(true)
        .extra_warnings(true)
        .file("emulation/kernels.cpp")
        .compile("flotilla_gpu_emulation");
}
