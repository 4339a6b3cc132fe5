//! `fn-trace`: complete function-entry coverage of a program, for the code layout of the
//! release ipamd.
//!
//! ipamd's resident code is most of its RSS, and the kernel faults file-backed text in by
//! 64 KiB fault-around blocks. `ipamd/hot-text.ld` therefore groups every function ipamd
//! really executes into one contiguous hot range and pushes the rest (the AWS SDK's unused
//! operations, error paths) away from it. That list must be *complete*: a single executed
//! function missing from it lands among the cold code and drags a whole 64 KiB block in. Perf
//! sampling only sees functions that happen to be running at a sample and misses the many
//! that run once and briefly, so this tool uses breakpoints instead: an `int3` over the first
//! byte of every function, each removed at its first hit — exact coverage at the cost of one
//! ptrace stop per executed function.
//!
//! Usage (a drop-in `bench-ipamd --ipamd` wrapper: every argument after the binary is passed
//! through, so the configuration lives in the environment):
//!
//! ```text
//! FN_TRACE_ADDRS=addrs.txt FN_TRACE_OUT=/tmp/hits fn-trace BINARY [ARGS...]
//! ```
//!
//! `scripts/gen-hot-text.sh` drives it: the addresses come from the release build's link map
//! (`scripts/gen-hot-text.py addrs MAP`; the shipped binary is stripped), and for an unstripped
//! binary `nm --defined-only BINARY | awk '$2 ~ /^[tTwW]$/ {print $1}'` gives them too.
//!
//! `FN_TRACE_ADDRS` lists link-time addresses (hex, one per line) of a PIE executable. Each
//! function hit is appended, as its link-time address in hex, to `<FN_TRACE_OUT>.<pid>` with
//! the pid of this tracer, so every (re)start of the traced program gets its own file. The exit
//! code is the program's own (128 + signal if it was killed). x86-64 Linux only.
//!
//! Limits: children the program forks are not traced (and would trap on a breakpoint still in
//! place if they ran the executable's code before `exec`; ipamd only spawns via `posix_spawn`,
//! whose child runs libc code only); `SIGSTOP` sent to the program is swallowed.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{Context, bail, ensure};

/// Byte of the x86 `int3` instruction.
const INT3: u8 = 0xCC;

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Exiting also kills the tracee (PTRACE_O_EXITKILL), so nothing runs untraced
            // with breakpoints left in it.
            eprintln!("fn-trace: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Reads the sorted, deduplicated link-time addresses from `path`.
fn read_addrs(path: &Path) -> anyhow::Result<Vec<u64>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("FN_TRACE_ADDRS {}", path.display()))?;
    let mut addrs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let s = line.trim();
        if s.is_empty() {
            continue;
        }
        let hex = s.strip_prefix("0x").unwrap_or(s);
        let a = u64::from_str_radix(hex, 16).with_context(|| {
            format!(
                "FN_TRACE_ADDRS {} line {}: {s:?} is not a hex address",
                path.display(),
                i + 1
            )
        })?;
        addrs.push(a);
    }
    ensure!(
        !addrs.is_empty(),
        "FN_TRACE_ADDRS {}: no addresses",
        path.display()
    );
    addrs.sort_unstable();
    addrs.dedup();
    Ok(addrs)
}

/// Maps a raw ptrace return value to an `io::Result`.
fn check(ret: libc::c_long) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Resumes stopped thread `tid`, delivering signal `sig` (0: none).
fn cont(tid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: PTRACE_CONT takes no pointers; the signal number is passed as the data word.
    #[allow(unsafe_code)]
    let ret = unsafe { libc::ptrace(libc::PTRACE_CONT, tid, 0usize, sig as usize) };
    check(ret)
}

/// Reads the program counter of stopped thread `tid`.
#[cfg(target_arch = "x86_64")]
fn get_pc(tid: libc::pid_t) -> io::Result<u64> {
    get_regs(tid).map(|r| r.rip)
}

/// Sets the program counter of stopped thread `tid`.
#[cfg(target_arch = "x86_64")]
fn set_pc(tid: libc::pid_t, pc: u64) -> io::Result<()> {
    let mut regs = get_regs(tid)?;
    regs.rip = pc;
    // SAFETY: PTRACE_SETREGS only reads one `user_regs_struct` from the pointer, which points
    // to a live one.
    #[allow(unsafe_code)]
    let ret = unsafe { libc::ptrace(libc::PTRACE_SETREGS, tid, 0usize, &raw const regs) };
    check(ret)
}

/// Reads the general-purpose registers of stopped thread `tid`.
#[cfg(target_arch = "x86_64")]
fn get_regs(tid: libc::pid_t) -> io::Result<libc::user_regs_struct> {
    // SAFETY: `user_regs_struct` is plain integers, so all-zero is a valid value.
    #[allow(unsafe_code)]
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: PTRACE_GETREGS writes exactly one `user_regs_struct` to the pointer, which points
    // to a live, writable one.
    #[allow(unsafe_code)]
    let ret = unsafe { libc::ptrace(libc::PTRACE_GETREGS, tid, 0usize, &raw mut regs) };
    check(ret).map(|()| regs)
}

// Other architectures: `run` refuses to start (their breakpoint instructions and program
// counter semantics differ); these only keep the file compiling there.
#[cfg(not(target_arch = "x86_64"))]
fn get_pc(_: libc::pid_t) -> io::Result<u64> {
    Err(io::ErrorKind::Unsupported.into())
}
#[cfg(not(target_arch = "x86_64"))]
fn set_pc(_: libc::pid_t, _: u64) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Waits for the next event of any traced thread: `(tid, raw status)`.
fn wait_any() -> io::Result<(libc::pid_t, libc::c_int)> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a live, writable c_int. __WALL: threads created by clone() are
        // not "children" for a plain waitpid(-1); without it their stops would never be seen.
        #[allow(unsafe_code)]
        let tid = unsafe { libc::waitpid(-1, &raw mut status, libc::__WALL) };
        if tid >= 0 {
            return Ok((tid, status));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The executable of `pid` (as the kernel names it), its load address and the end of its last
/// mapping. The load address is the start of its first mapping, which for a PIE maps file
/// offset 0 at link-time address 0, so `runtime = base + link-time`. The executable is named
/// by the kernel's own `/proc/PID/exe` (the path `exec` resolved, symlinks followed, exactly as
/// /proc/PID/maps spells it), so a relative path, a symlink or a `PATH` lookup cannot make us
/// miss it.
fn exe_mapping(pid: libc::pid_t) -> anyhow::Result<(String, u64, u64)> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .with_context(|| format!("/proc/{pid}/exe"))?;
    let exe = exe.to_string_lossy().into_owned();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("/proc/{pid}/maps"))?;
    let mut span: Option<(u64, u64)> = None;
    for line in maps.lines() {
        if !line
            .strip_suffix(exe.as_str())
            .is_some_and(|p| p.ends_with(' '))
        {
            continue;
        }
        let range = line.split(' ').next().unwrap_or_default();
        let parsed = range.split_once('-').and_then(|(s, e)| {
            Some((
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
            ))
        });
        let (start, end) = parsed.with_context(|| format!("bad /proc/{pid}/maps line {line:?}"))?;
        span = Some(span.map_or((start, end), |(s, e)| (s, e.max(end))));
    }
    let (base, end) = span.with_context(|| format!("{exe} is not mapped in /proc/{pid}/maps"))?;
    Ok((exe, base, end))
}

fn run() -> anyhow::Result<u8> {
    ensure!(
        cfg!(target_arch = "x86_64"),
        "fn-trace supports x86-64 only"
    );
    let mut args = std::env::args_os().skip(1);
    let Some(bin) = args.next() else {
        bail!("usage: FN_TRACE_ADDRS=FILE FN_TRACE_OUT=PREFIX fn-trace BINARY [ARGS...]");
    };
    let addrs_file = std::env::var_os("FN_TRACE_ADDRS").context("FN_TRACE_ADDRS is not set")?;
    let out_prefix = std::env::var_os("FN_TRACE_OUT").context("FN_TRACE_OUT is not set")?;
    let addrs = read_addrs(Path::new(&addrs_file))?;
    let mut out_path = out_prefix;
    out_path.push(format!(".{}", std::process::id()));
    let mut out = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&out_path)
        .with_context(|| format!("FN_TRACE_OUT {}", Path::new(&out_path).display()))?;

    let mut cmd = Command::new(&bin);
    cmd.args(args);
    // SAFETY: the hook runs in the forked child before exec and only makes one async-signal-
    // safe syscall. PTRACE_TRACEME makes the exec stop the child with SIGTRAP before its first
    // instruction, so the breakpoints are in place before any of its code runs.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| check(libc::ptrace(libc::PTRACE_TRACEME, 0, 0usize, 0usize)));
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {:?}", bin))?;
    let pid = libc::pid_t::try_from(child.id()).context("child pid out of range")?;
    let (_, status) = wait_any().context("waiting for the exec stop")?;
    ensure!(
        libc::WIFSTOPPED(status),
        "{bin:?} did not stop at exec (status {status:#x})"
    );
    // SAFETY: PTRACE_SETOPTIONS takes the option bits as the data word, no pointers.
    // TRACECLONE: every thread must be traced, or a thread hitting a breakpoint dies of
    // SIGTRAP. EXITKILL: if the tracer dies, the program must not run on with int3s in it.
    #[allow(unsafe_code)]
    let ret = unsafe {
        let opts = libc::PTRACE_O_TRACECLONE | libc::PTRACE_O_EXITKILL;
        libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0usize, opts as usize)
    };
    check(ret).context("PTRACE_SETOPTIONS")?;

    let (exe, base, end) = exe_mapping(pid)?;
    let (lo, hi) = (addrs[0], addrs[addrs.len() - 1]);
    // Also keeps a list made for another binary from allocating a huge buffer below.
    ensure!(
        hi < end - base,
        "FN_TRACE_ADDRS {}: address {hi:x} is beyond {exe}'s mappings (it spans {:x} bytes): \
         a list for another binary?",
        Path::new(&addrs_file).display(),
        end - base
    );
    let mem_path = format!("/proc/{pid}/mem");
    // /proc/PID/mem writes go through FOLL_FORCE, so they can patch read-only text (privately,
    // copy-on-write) without mprotect in the tracee.
    let mem = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&mem_path)
        .with_context(|| mem_path.clone())?;
    // One read and one write of the whole span instead of two syscalls per function
    // (ipamd has ~14k functions).
    let len = usize::try_from(hi - lo + 1).context("address span too large")?;
    let mut buf = vec![0u8; len];
    mem.read_exact_at(&mut buf, base + lo).with_context(|| {
        format!(
            "reading {mem_path} at {:#x}..={:#x} ({exe}'s addresses {lo:x}..={hi:x}; \
                 is FN_TRACE_ADDRS a list for this binary?)",
            base + lo,
            base + hi
        )
    })?;
    let mut orig = Vec::with_capacity(addrs.len());
    for &a in &addrs {
        let off = (a - lo) as usize;
        orig.push(buf[off]);
        buf[off] = INT3;
    }
    mem.write_all_at(&buf, base + lo)
        .with_context(|| format!("writing {mem_path} at {:#x}", base + lo))?;
    drop(buf);
    let mut done = vec![false; addrs.len()];
    eprintln!("fn-trace: {} breakpoints, base {base:#x}", addrs.len());
    cont(pid, 0).context("PTRACE_CONT")?;

    loop {
        let (tid, status) = wait_any().context("waitpid")?;
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            if tid == pid {
                return Ok(if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status) as u8
                } else {
                    128 + libc::WTERMSIG(status) as u8
                });
            }
            continue;
        }
        if !libc::WIFSTOPPED(status) {
            continue;
        }
        // A thread can vanish between its stop and our request (another thread called
        // exit_group): ESRCH then is harmless, its exit is reported by waitpid.
        let benign = |r: io::Result<()>| match r {
            Err(e) if e.raw_os_error() != Some(libc::ESRCH) => Err(e),
            _ => Ok(()),
        };
        // A ptrace event stop (here only PTRACE_EVENT_CLONE) carries the event in bits 16+;
        // it is not a signal, so it must not be delivered.
        if status >> 16 != 0 {
            benign(cont(tid, 0)).context("PTRACE_CONT after an event")?;
            continue;
        }
        let mut sig = libc::WSTOPSIG(status);
        if sig == libc::SIGTRAP {
            let pc = match get_pc(tid) {
                Ok(pc) => pc,
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
                Err(e) => return Err(e).context("PTRACE_GETREGS"),
            };
            // int3 leaves rip just past itself.
            let a = pc.wrapping_sub(1).wrapping_sub(base);
            if let Ok(i) = addrs.binary_search(&a) {
                // A thread racing on a breakpoint another thread has just removed still traps:
                // for it, only the rewind below is left to do.
                if !done[i] {
                    mem.write_all_at(&orig[i..=i], base + a)
                        .with_context(|| format!("restoring {mem_path} at {:#x}", base + a))?;
                    out.write_all(format!("{a:x}\n").as_bytes())
                        .with_context(|| format!("writing {}", Path::new(&out_path).display()))?;
                    done[i] = true;
                }
                // Rewind onto the restored first instruction so that it runs as if the int3
                // had never been there.
                benign(set_pc(tid, pc - 1)).context("PTRACE_SETREGS")?;
                benign(cont(tid, 0)).context("PTRACE_CONT")?;
                continue;
            }
        }
        // New threads start with a SIGSTOP of their own (TRACECLONE): swallow it. Any other
        // signal is the program's and is delivered.
        if sig == libc::SIGSTOP {
            sig = 0;
        }
        benign(cont(tid, sig)).context("PTRACE_CONT")?;
    }
}
