//! Compiles bpf/trace.bpf.c into a BPF object with clang (`-target bpf -mcpu=v3 -O2 -g`) for
//! the BPF route (src/bpf.rs embeds it). Without clang the build still succeeds with a warning, and
//! `portlab trace` uses the perf route.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/trace.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=PORTLAB_BPF_CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let obj = out.join("trace.bpf.o");
    let clang = std::env::var("PORTLAB_BPF_CLANG").unwrap_or_else(|_| "clang".to_string());
    let result = Command::new(&clang)
        .args([
            "-target", "bpf", "-mcpu=v3", "-O2", "-g", "-Wall", "-Werror", "-c", src, "-o",
        ])
        .arg(&obj)
        .output();
    let ok = match result {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            println!(
                "cargo:warning=clang failed to compile {src}; portlab trace will use the perf route: {}",
                String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or("")
            );
            false
        }
        Err(e) => {
            println!(
                "cargo:warning={clang} not found ({e}); portlab trace is built without its BPF route and uses perf_event_open (apt-get install clang)"
            );
            false
        }
    };
    if !ok {
        // An empty object: src/bpf.rs reports the route as not built.
        std::fs::write(&obj, []).expect("writing OUT_DIR/trace.bpf.o");
    }
}
