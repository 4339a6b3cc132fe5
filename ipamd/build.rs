//! Link settings for the `ipamd` binary.
//!
//! Release builds pack relative relocations (`-z pack-relative-relocs`, DT_RELR). A position-
//! independent Rust binary of this size carries ~760 KB of `R_X86_64_RELATIVE` entries (24 bytes
//! each, one per pointer in vtables and static tables); the dynamic loader reads all of them at
//! start, so they are resident for the life of the process. RELR encodes the same relocations
//! as bitmaps in a few KB. It needs glibc ≥ 2.36 at run time (Debian 12, our image base) and
//! binutils ≥ 2.38 at link time; debug builds keep the classic format so they run anywhere.

fn main() {
    println!("cargo:rerun-if-env-changed=PROFILE");
    if std::env::var("PROFILE").as_deref() == Ok("release") {
        println!("cargo:rustc-link-arg-bin=ipamd=-Wl,-z,pack-relative-relocs");
    }
}
