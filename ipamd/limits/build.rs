// Build script of awscni-limits: writes `$OUT_DIR/instance-types.idx`, a compact row index of
// the compiled-in `data/instance-types.json`, for `table::lookup`.
//
// Why: the table is one ≈690 KiB constant in `.rodata`. Splitting it into lines at run time
// (or binary-searching the text itself) reads pages all over it, and the kernel maps
// file-backed pages in 64 KiB fault-around blocks, so the whole table would stay in ipamd's
// RSS although ipamd needs one row. With this index a cold `lookup` reads only the index (a few
// pages, contiguous) plus the bytes of the one row it returns.
//
// Plain `//` comments and `pub(crate)` items on purpose: `table.rs`'s tests `include!` this
// file to test `build_row_index`, and an included file may not carry inner (`//!`) comments.
//
// Only std: the generator's layout (one `{"name":"…",…}` object per line after a `"types":[`
// line, sorted by name) is simple enough to index without a JSON parser, and the run-time side
// checks each row it parses anyway. Any surprise yields an empty index (not a build failure);
// `lookup` then parses the whole table as it did before this index existed.

use std::env;
use std::fs;
use std::path::PathBuf;

/// First four bytes of a usable index (format version 1).
pub(crate) const INDEX_MAGIC: [u8; 4] = *b"ITX1";
/// Header: magic, then `DATA.len()` and the row count, each a little-endian u32.
pub(crate) const INDEX_HEADER_LEN: usize = 12;
/// One record per row, sorted by name: name offset and length into the names area (which
/// follows the records), row offset and length into the table text; little-endian u32 each.
/// Offsets, not pointers: an array of `&str` would need a load-time relocation per entry, i.e.
/// anonymous, always-resident memory, while these bytes stay in `.rodata` until read.
pub(crate) const INDEX_RECORD_LEN: usize = 16;

/// Builds the index of `text` (the table file), or `None` when `text` does not have the
/// generator's layout: no `"count":N` line, no `"types":[` line, a row that does not start
/// with its name, no `]}` terminator, names not strictly sorted, a number of rows other than
/// the header's count, or a size beyond u32.
///
/// The count check matters: `lookup` trusts an index miss, so a row the line scan did not see
/// (say, two objects on one line) must disable the index rather than make that type unknown.
pub(crate) fn build_row_index(text: &str) -> Option<Vec<u8>> {
    const COUNT: &str = "\n\"count\":";
    const START: &str = "\n\"types\":[\n";
    let rest = &text[text.find(COUNT)? + COUNT.len()..];
    let count: usize = rest[..rest.find(|c: char| !c.is_ascii_digit())?]
        .parse()
        .ok()?;
    let mut offset = text.find(START)? + START.len();
    // (name, row offset, row length); the name and the row both borrow from `text`.
    let mut rows: Vec<(&str, usize, usize)> = Vec::new();
    let mut terminated = false;
    for piece in text[offset..].split_inclusive('\n') {
        let line = piece.strip_suffix('\n').unwrap_or(piece);
        if line.starts_with("]}") {
            terminated = true;
            break;
        }
        let rest = line.strip_prefix("{\"name\":\"")?;
        let name = &rest[..rest.find('"')?];
        // An escape would make the raw bytes differ from the parsed name; EC2 names have none.
        if name.is_empty() || name.contains('\\') {
            return None;
        }
        let row = line.strip_suffix(',').unwrap_or(line);
        rows.push((name, offset, row.len()));
        offset += piece.len();
    }
    if !terminated
        || rows.is_empty()
        || rows.len() != count
        || rows.windows(2).any(|w| w[0].0 >= w[1].0)
    {
        return None;
    }

    let u32_le = |v: usize| u32::try_from(v).ok().map(u32::to_le_bytes);
    let names_len: usize = rows.iter().map(|r| r.0.len()).sum();
    let mut out = Vec::with_capacity(INDEX_HEADER_LEN + rows.len() * INDEX_RECORD_LEN + names_len);
    out.extend_from_slice(&INDEX_MAGIC);
    out.extend_from_slice(&u32_le(text.len())?);
    out.extend_from_slice(&u32_le(rows.len())?);
    let mut name_offset = 0;
    for &(name, row_offset, row_len) in &rows {
        out.extend_from_slice(&u32_le(name_offset)?);
        out.extend_from_slice(&u32_le(name.len())?);
        out.extend_from_slice(&u32_le(row_offset)?);
        out.extend_from_slice(&u32_le(row_len)?);
        name_offset += name.len();
    }
    for &(name, _, _) in &rows {
        out.extend_from_slice(name.as_bytes());
    }
    Some(out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rerun-if-changed=data/instance-types.json");
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set")?;
    let out_dir = env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?;
    let data = PathBuf::from(manifest_dir).join("data/instance-types.json");
    // A missing or non-UTF-8 file fails the build, as `include_str!` of it would anyway.
    let text = fs::read_to_string(&data).map_err(|e| format!("reading {}: {e}", data.display()))?;
    let index = build_row_index(&text).unwrap_or_else(|| {
        println!(
            "cargo::warning={} does not have the generator's one-row-per-line layout; \
             lookup() will parse the whole table",
            data.display()
        );
        Vec::new()
    });
    let out = PathBuf::from(out_dir).join("instance-types.idx");
    fs::write(&out, index).map_err(|e| format!("writing {}: {e}", out.display()))?;
    Ok(())
}
