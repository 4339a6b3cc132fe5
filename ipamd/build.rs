//! Link settings for the `ipamd` binary (release builds only; debug builds link plainly so they
//! run anywhere and link fast).
//!
//! - Relative relocations are packed (`-z pack-relative-relocs`, DT_RELR). A position-
//!   independent Rust binary of this size carries ~760 KB of `R_X86_64_RELATIVE` entries (24
//!   bytes each, one per pointer in vtables and static tables); the dynamic loader reads all of
//!   them at start, so they are resident for the life of the process. RELR encodes the same
//!   relocations as bitmaps in a few KB. It needs glibc ≥ 2.36 at run time (Debian 12, our image
//!   base) and binutils ≥ 2.38 or LLD at link time.
//! - `hot-text.ld` packs the functions ipamd really executes into one `.text.hot` output section
//!   in front of `.text`. The kernel maps code in 64 KiB fault-around blocks, so scattered hot
//!   functions keep most of `.text` resident; packed, only the executed ~3 MiB are. The script
//!   only adds a section (`INSERT BEFORE .text`), both LLD and GNU ld accept it, and a pattern
//!   that matches nothing is ignored: a stale list costs memory, never a failed build.
//!   `scripts/gen-hot-text.sh` regenerates it; docs/benchmarks/ipamd.md has the numbers.

fn main() {
    println!("cargo:rerun-if-env-changed=PROFILE");
    println!("cargo:rerun-if-changed=hot-text.ld");
    println!("cargo:rerun-if-env-changed=AWSCNI_LINK_MAP");
    if std::env::var("PROFILE").as_deref() != Ok("release") {
        return;
    }
    println!("cargo:rustc-link-arg-bin=ipamd=-Wl,-z,pack-relative-relocs");
    // scripts/gen-hot-text.sh asks for a link map: it names every function's section and
    // address in exactly the shipped build (a build with symbols kept would be a different one:
    // the profile's `strip` setting changes the crates' symbol hashes).
    if let Ok(map) = std::env::var("AWSCNI_LINK_MAP") {
        println!("cargo:rustc-link-arg-bin=ipamd=-Xlinker");
        println!("cargo:rustc-link-arg-bin=ipamd=-Map={map}");
    }
    // The linker runs in another directory, so the script's path must be absolute.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hot-text.ld");
    if script.is_file() {
        // -Xlinker hands the next argument over verbatim (-Wl, would split a path at commas).
        println!("cargo:rustc-link-arg-bin=ipamd=-Xlinker");
        println!(
            "cargo:rustc-link-arg-bin=ipamd=--script={}",
            script.display()
        );
    } else {
        println!(
            "cargo:warning={} missing: linking ipamd without the hot/cold layout",
            script.display()
        );
    }
}
