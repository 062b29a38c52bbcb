//! Bakes libtorch's library folder into the rpath of every binary, test and
//! benchmark, so they run without LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(root) = std::env::var("LIBTORCH") {
        // Canonical, so a clone's `.libtorch` link never ends up in a binary
        // that outlives the clone.
        let lib = std::fs::canonicalize(&root)
            .unwrap_or_else(|_| root.into())
            .join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
