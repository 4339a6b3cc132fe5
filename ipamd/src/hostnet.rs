//! Host networking done by the daemon (datapath.md §4–11): node set-up, per-secondary-ENI links,
//! tables and rules, SNAT/connmark iptables rules, and re-applying per-pod rules.
//!
//! Netlink goes through the plugin's synchronous facade ([`aws_cni::netlink`]); every function
//! here is synchronous and works in the calling thread's network namespace (the daemon calls
//! them from a blocking task). iptables goes through [`CommandRunner`] (the `iptables` /
//! `iptables-save` binaries on `PATH`, always with `-w` so we queue on the xtables lock instead of
//! failing next to kube-proxy), sysctls through [`Sysctl`]; both are seams for unit tests.
//!
//! Everything is idempotent: running any function twice changes nothing the second time, and
//! rules we own but no longer want (stale CIDRs, an old mark, the pre-1.x `--state NEW` rule)
//! are removed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use aws_cni::netlink::{Created, Deleted, MacAddr, Netlink, NlError, Route, Rule, TABLE_MAIN};
use ipnet::{IpNet, Ipv4Net};

/// Priority of the `to <podIP> lookup main` rule (plugin-owned; re-applied by us).
pub const PRIO_TO_POD: u32 = 512;
/// Priority of the `fwmark <mark>/<mark> lookup main` rule.
pub const PRIO_FWMARK: u32 = 1024;
/// Priority of the `to <cidr> lookup main` external-service rules.
pub const PRIO_EXTERNAL_SERVICE: u32 = 1535;
/// Priority of the `from <podIP> lookup <eni table>` rule (plugin-owned; re-applied by us).
pub const PRIO_FROM_POD: u32 = 1536;
/// Priority of the `from <ENI primary IP> lookup <eni table>` rule.
pub const PRIO_ENI: u32 = 32765;

/// NAT chain holding the SNAT rules.
pub const SNAT_CHAIN: &str = "AWS-SNAT-CHAIN-0";
/// NAT chain holding the egress connmark rules.
pub const CONNMARK_CHAIN: &str = "AWS-CONNMARK-CHAIN-0";

/// nftables table upstream uses for egress connmark on nf_tables hosts.
pub const NFT_TABLE: &str = "aws-cni";

/// Errors of host set-up.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NlError),
    /// No link with this MAC appeared in time.
    #[error("no link with MAC {mac} after {attempts} attempts")]
    LinkNotFound {
        /// MAC searched.
        mac: String,
        /// Attempts made.
        attempts: u32,
    },
    /// A MAC string could not be parsed.
    #[error("invalid MAC {0:?}")]
    BadMac(String),
    /// A sysctl write failed.
    #[error("sysctl {path}: {source}")]
    Sysctl {
        /// Path under /proc/sys.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// An external command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// Command line.
        command: String,
        /// Exit status (or spawn error).
        status: String,
        /// Its stderr.
        stderr: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Seams: commands and sysctls

/// Runs an external program and returns its stdout.
pub trait CommandRunner: Send + Sync {
    /// Run `program args…`; non-zero exit is an error carrying stderr.
    fn run(&self, program: &str, args: &[String]) -> Result<String, HostError>;
}

/// Runs programs for real. `prefix` is prepended to every command line (tests use
/// `["ip", "netns", "exec", "<ns>"]` so a mistake can never reach the root namespace).
#[derive(Debug, Clone, Default)]
pub struct SystemRunner {
    /// Words prepended to each command.
    pub prefix: Vec<String>,
}

impl CommandRunner for SystemRunner {
    fn run(&self, program: &str, args: &[String]) -> Result<String, HostError> {
        let mut argv: Vec<&str> = self.prefix.iter().map(String::as_str).collect();
        argv.push(program);
        argv.extend(args.iter().map(String::as_str));
        let command = argv.join(" ");
        let (bin, rest) = argv.split_first().ok_or_else(|| HostError::Command {
            command: command.clone(),
            status: "empty command".into(),
            stderr: String::new(),
        })?;
        let out = Command::new(bin)
            .args(rest)
            .output()
            .map_err(|e| HostError::Command {
                command: command.clone(),
                status: e.to_string(),
                stderr: String::new(),
            })?;
        if !out.status.success() {
            return Err(HostError::Command {
                command,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Records commands and replays canned results (unit tests). Without a queued reply a command
/// succeeds with empty output.
#[derive(Debug, Default)]
pub struct RecordingRunner {
    /// Every command line run, in order.
    pub calls: Mutex<Vec<String>>,
    /// Replies keyed by a command-line prefix, consumed in order.
    pub replies: Mutex<VecDeque<(String, Result<String, String>)>>,
}

impl RecordingRunner {
    /// Queue a reply for the next command starting with `prefix`.
    pub fn reply(&self, prefix: &str, r: Result<&str, &str>) {
        if let Ok(mut q) = self.replies.lock() {
            q.push_back((
                prefix.to_string(),
                r.map(str::to_string).map_err(str::to_string),
            ));
        }
    }

    /// Commands run so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl CommandRunner for RecordingRunner {
    fn run(&self, program: &str, args: &[String]) -> Result<String, HostError> {
        let line = std::iter::once(program.to_string())
            .chain(args.iter().map(|a| {
                if a.contains(' ') {
                    format!("\"{a}\"")
                } else {
                    a.clone()
                }
            }))
            .collect::<Vec<_>>()
            .join(" ");
        if let Ok(mut c) = self.calls.lock() {
            c.push(line.clone());
        }
        let mut q = match self.replies.lock() {
            Ok(q) => q,
            Err(p) => p.into_inner(),
        };
        if let Some(pos) = q.iter().position(|(p, _)| line.starts_with(p.as_str()))
            && let Some((_, r)) = q.remove(pos)
        {
            return r.map_err(|stderr| HostError::Command {
                command: line,
                status: "exit status: 1".into(),
                stderr,
            });
        }
        Ok(String::new())
    }
}

/// Writes sysctls.
pub trait Sysctl: Send + Sync {
    /// Set `path` (relative to /proc/sys, `/`-separated) to `value`; returns whether it changed.
    /// A missing key is not an error (returns `Ok(false)`).
    fn set(&self, path: &str, value: &str) -> Result<bool, HostError>;
}

/// `/proc/sys` of the calling thread's network namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSysctl;

impl Sysctl for ProcSysctl {
    fn set(&self, path: &str, value: &str) -> Result<bool, HostError> {
        aws_cni::netns::set_sysctl(path, value).map_err(|source| HostError::Sysctl {
            path: path.to_string(),
            source,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// iptables

/// `AWS_VPC_K8S_CNI_RANDOMIZESNAT` (the same type as [`crate::config::RandomizeSnat`]);
/// [`RandomizeSnat::parse`] is upstream's lenient parsing.
pub use awscni_envconf::RandomizeSnat;

/// Inputs of the SNAT/connmark rules (datapath.md §11).
#[derive(Debug, Clone, PartialEq)]
pub struct SnatSettings {
    /// `AWS_VPC_K8S_CNI_EXTERNALSNAT`.
    pub external_snat: bool,
    /// `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS` (IPv4 only).
    pub exclude_snat_cidrs: Vec<Ipv4Net>,
    /// `AWS_VPC_K8S_CNI_RANDOMIZESNAT`.
    pub randomize: RandomizeSnat,
    /// Whether the iptables binary supports `--random-fully` (see [`random_fully_supported`]).
    pub random_fully_supported: bool,
    /// `AWS_VPC_CNI_NODE_PORT_SUPPORT`.
    pub node_port_support: bool,
    /// `AWS_VPC_K8S_CNI_CONNMARK` (mark and mask).
    pub connmark: u32,
    /// `AWS_VPC_K8S_CNI_VETHPREFIX`.
    pub veth_prefix: String,
    /// Name of the primary ENI link.
    pub primary_if: String,
    /// Node primary IPv4 (SNAT source).
    pub node_ip: Ipv4Addr,
    /// VPC IPv4 CIDRs (from IMDS, primary MAC).
    pub vpc_cidrs: Vec<Ipv4Net>,
}

/// Split an `iptables -S` / `iptables-save` rule into tokens, honouring double quotes (and `\"`
/// inside them), as upstream's stale-rule detector does.
pub fn split_rule(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_q = false;
    let mut had = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_q => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                in_q = !in_q;
                had = true;
            }
            c if c.is_whitespace() && !in_q => {
                if had || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    had = false;
                }
            }
            c => cur.push(c),
        }
    }
    if had || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// One table as `iptables-save -t <table>` prints it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SavedTable {
    /// Chains (built-in and user).
    pub chains: BTreeSet<String>,
    /// Rules as (chain, tokens without `-A <chain>`), in order.
    pub rules: Vec<(String, Vec<String>)>,
}

impl SavedTable {
    /// Parse `iptables-save` output for one table.
    pub fn parse(text: &str) -> Self {
        let mut t = Self::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(':') {
                if let Some(name) = rest.split_whitespace().next() {
                    t.chains.insert(name.to_string());
                }
            } else if line.starts_with("-A ") {
                let mut toks = split_rule(line);
                if toks.len() >= 2 {
                    let chain = toks[1].clone();
                    toks.drain(..2);
                    t.rules.push((chain, toks));
                }
            }
        }
        t
    }

    /// Rules of one chain, in order.
    pub fn chain_rules(&self, chain: &str) -> Vec<&Vec<String>> {
        self.rules
            .iter()
            .filter(|(c, _)| c == chain)
            .map(|(_, r)| r)
            .collect()
    }
}

/// Does this iptables support `--random-fully`? (added in iptables 1.6.2). Parses
/// `iptables --version` (`iptables v1.8.9 (nf_tables)`).
pub fn random_fully_supported(runner: &dyn CommandRunner) -> bool {
    let Ok(out) = runner.run("iptables", &["--version".to_string()]) else {
        return false;
    };
    let Some(v) = out.split_whitespace().find_map(|w| w.strip_prefix('v')) else {
        return false;
    };
    let nums: Vec<u32> = v.split('.').filter_map(|n| n.parse().ok()).collect();
    nums >= vec![1, 6, 2]
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_string()).collect()
}

fn mark_hex(mark: u32) -> String {
    format!("{mark:#x}")
}

/// Desired rules of `AWS-SNAT-CHAIN-0`, in `iptables -S` form (last = the final SNAT rule).
pub fn desired_snat_chain(st: &SnatSettings) -> Vec<Vec<String>> {
    if st.external_snat {
        return Vec::new();
    }
    let mut v = Vec::new();
    for c in &st.vpc_cidrs {
        v.push(s(&[
            "-d",
            &c.to_string(),
            "-m",
            "comment",
            "--comment",
            "AWS SNAT CHAIN",
            "-j",
            "RETURN",
        ]));
    }
    for c in &st.exclude_snat_cidrs {
        let mut r = Vec::new();
        if c.prefix_len() != 0 {
            r.extend(s(&["-d", &c.to_string()]));
        }
        r.extend(s(&[
            "-m",
            "comment",
            "--comment",
            "AWS SNAT CHAIN EXCLUSION",
            "-j",
            "RETURN",
        ]));
        v.push(r);
    }
    let mut last = s(&[
        "!",
        "-o",
        "vlan+",
        "-m",
        "comment",
        "--comment",
        "AWS, SNAT",
        "-m",
        "addrtype",
        "!",
        "--dst-type",
        "LOCAL",
        "-j",
        "SNAT",
        "--to-source",
        &st.node_ip.to_string(),
    ]);
    match st.randomize {
        RandomizeSnat::Prng if st.random_fully_supported => last.push("--random-fully".into()),
        RandomizeSnat::Prng | RandomizeSnat::HashRandom => last.push("--random".into()),
        RandomizeSnat::None => {}
    }
    v.push(last);
    dedup(v)
}

/// Desired rules of `AWS-CONNMARK-CHAIN-0` (last = the final set-mark rule).
pub fn desired_connmark_chain(st: &SnatSettings) -> Vec<Vec<String>> {
    if st.external_snat {
        return Vec::new();
    }
    let mut v = Vec::new();
    for c in st.vpc_cidrs.iter().chain(&st.exclude_snat_cidrs) {
        let mut r = Vec::new();
        if c.prefix_len() != 0 {
            r.extend(s(&["-d", &c.to_string()]));
        }
        r.extend(s(&[
            "-m",
            "comment",
            "--comment",
            "AWS CONNMARK CHAIN",
            "-j",
            "RETURN",
        ]));
        v.push(r);
    }
    let m = mark_hex(st.connmark);
    v.push(s(&[
        "-m",
        "comment",
        "--comment",
        "AWS, CONNMARK",
        "-j",
        "CONNMARK",
        "--set-xmark",
        &format!("{m}/{m}"),
    ]));
    dedup(v)
}

fn dedup(v: Vec<Vec<String>>) -> Vec<Vec<String>> {
    let mut seen = BTreeSet::new();
    v.into_iter().filter(|r| seen.insert(r.clone())).collect()
}

/// A rule in a built-in chain, identified by its comment, in `iptables -S` form (the form is
/// also valid input, so the same tokens add, match and delete it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct HookRule {
    table: &'static str,
    chain: &'static str,
    spec: Vec<String>,
}

/// Comments that mark rules in built-in chains as ours (datapath.md §11.3).
const OUR_HOOK_COMMENTS: &[&str] = &[
    "AWS SNAT CHAIN",
    "AWS, primary ENI",
    "AWS, outbound connections",
    "AWS, CONNMARK",
];

fn desired_hook_rules(st: &SnatSettings) -> Vec<HookRule> {
    let m = mark_hex(st.connmark);
    let veths = format!("{}+", st.veth_prefix);
    let mut v = Vec::new();
    if !st.external_snat {
        v.push(HookRule {
            table: "nat",
            chain: "POSTROUTING",
            spec: s(&[
                "-m",
                "comment",
                "--comment",
                "AWS SNAT CHAIN",
                "-j",
                SNAT_CHAIN,
            ]),
        });
    }
    if st.node_port_support {
        v.push(HookRule {
            table: "mangle",
            chain: "PREROUTING",
            spec: s(&[
                "-i",
                &st.primary_if,
                "-m",
                "comment",
                "--comment",
                "AWS, primary ENI",
                "-m",
                "addrtype",
                "--dst-type",
                "LOCAL",
                "--limit-iface-in",
                "-j",
                "CONNMARK",
                "--set-xmark",
                &format!("{m}/{m}"),
            ]),
        });
    }
    if st.node_port_support || !st.external_snat {
        v.push(HookRule {
            table: "mangle",
            chain: "PREROUTING",
            spec: s(&[
                "-i",
                &veths,
                "-m",
                "comment",
                "--comment",
                "AWS, primary ENI",
                "-j",
                "CONNMARK",
                "--restore-mark",
                "--nfmask",
                &m,
                "--ctmask",
                &m,
            ]),
        });
    }
    if st.node_port_support {
        v.push(HookRule {
            table: "mangle",
            chain: "PREROUTING",
            spec: s(&[
                "-i",
                "vlan+",
                "-m",
                "comment",
                "--comment",
                "AWS, primary ENI",
                "-j",
                "CONNMARK",
                "--restore-mark",
                "--nfmask",
                &m,
                "--ctmask",
                &m,
            ]),
        });
    }
    if !st.external_snat {
        v.push(HookRule {
            table: "nat",
            chain: "PREROUTING",
            spec: s(&[
                "-i",
                &veths,
                "-m",
                "comment",
                "--comment",
                "AWS, outbound connections",
                "-j",
                CONNMARK_CHAIN,
            ]),
        });
        // Must come after the jump above (it restores the mark the chain just set).
        v.push(HookRule {
            table: "nat",
            chain: "PREROUTING",
            spec: s(&[
                "-m",
                "comment",
                "--comment",
                "AWS, CONNMARK",
                "-j",
                "CONNMARK",
                "--restore-mark",
                "--nfmask",
                &m,
                "--ctmask",
                &m,
            ]),
        });
    }
    v
}

/// What [`reconcile_iptables`] changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IptablesReport {
    /// Commands that changed state, as run.
    pub changes: Vec<String>,
}

struct Ipt<'a> {
    r: &'a dyn CommandRunner,
    report: IptablesReport,
}

impl Ipt<'_> {
    fn save(&self, table: &str) -> Result<SavedTable, HostError> {
        let out = self
            .r
            .run("iptables-save", &["-t".to_string(), table.to_string()])?;
        Ok(SavedTable::parse(&out))
    }

    fn exec(&mut self, table: &str, args: Vec<String>) -> Result<(), HostError> {
        let mut a = s(&["-w", "-t", table]);
        a.extend(args);
        self.r.run("iptables", &a)?;
        self.report
            .changes
            .push(format!("iptables {}", a.join(" ")));
        Ok(())
    }

    fn rule_op(
        &mut self,
        table: &str,
        op: &str,
        chain: &str,
        pos: Option<usize>,
        spec: &[String],
    ) -> Result<(), HostError> {
        let mut a = vec![op.to_string(), chain.to_string()];
        if let Some(p) = pos {
            a.push(p.to_string());
        }
        a.extend(spec.iter().cloned());
        self.exec(table, a)
    }

    /// Make `chain` hold exactly `desired` (the last one appended last, the others inserted at
    /// position 1), deleting everything else. The full desired state is known before any change,
    /// so (unlike upstream) the final rule is never deleted and re-added on a clean pass.
    fn reconcile_chain(
        &mut self,
        table: &str,
        saved: &SavedTable,
        chain: &str,
        desired: &[Vec<String>],
    ) -> Result<(), HostError> {
        let current = saved.chain_rules(chain);
        let want: BTreeSet<&Vec<String>> = desired.iter().collect();
        let mut kept: Vec<&Vec<String>> = Vec::new();
        for r in &current {
            if want.contains(r) && !kept.contains(r) {
                kept.push(r);
            } else {
                self.rule_op(table, "-D", chain, None, r)?;
            }
        }
        let Some((last, rest)) = desired.split_last() else {
            return Ok(());
        };
        // Final rule present but not last among what we kept ⇒ move it to the end.
        let last_pos = kept.iter().position(|r| *r == last);
        let mut last_ok = last_pos.is_some_and(|p| p + 1 == kept.len());
        if let Some(_p) = last_pos.filter(|_| !last_ok) {
            self.rule_op(table, "-D", chain, None, last)?;
        }
        for r in rest {
            if !kept.contains(&r) {
                self.rule_op(table, "-I", chain, Some(1), r)?;
            }
        }
        if !last_ok {
            self.rule_op(table, "-A", chain, None, last)?;
            last_ok = true;
        }
        debug_assert!(last_ok);
        Ok(())
    }
}

/// Bring the SNAT and connmark iptables rules to the state `st` asks for (datapath.md §11),
/// removing our stale rules and chains. Safe to call any number of times (the periodic VPC-CIDR
/// refresh calls it again when the CIDRs change).
pub fn reconcile_iptables(
    runner: &dyn CommandRunner,
    st: &SnatSettings,
) -> Result<IptablesReport, HostError> {
    let mut ipt = Ipt {
        r: runner,
        report: IptablesReport::default(),
    };
    let nat = ipt.save("nat")?;
    let mangle = ipt.save("mangle")?;

    // 1. Our chains exist (the SNAT chain always; upstream creates it even with external SNAT).
    if !nat.chains.contains(SNAT_CHAIN) {
        ipt.exec("nat", s(&["-N", SNAT_CHAIN]))?;
    }
    if !st.external_snat && !nat.chains.contains(CONNMARK_CHAIN) {
        ipt.exec("nat", s(&["-N", CONNMARK_CHAIN]))?;
    }

    // 2. Chain contents.
    ipt.reconcile_chain("nat", &nat, SNAT_CHAIN, &desired_snat_chain(st))?;
    if nat.chains.contains(CONNMARK_CHAIN) || !st.external_snat {
        ipt.reconcile_chain("nat", &nat, CONNMARK_CHAIN, &desired_connmark_chain(st))?;
    }

    // 3. Rules in built-in chains, recognised by our comment strings.
    let desired = desired_hook_rules(st);
    for (table, saved) in [("nat", &nat), ("mangle", &mangle)] {
        for chain in ["PREROUTING", "POSTROUTING"] {
            let want: Vec<&HookRule> = desired
                .iter()
                .filter(|h| h.table == table && h.chain == chain)
                .collect();
            let current = saved.chain_rules(chain);
            let ours = |r: &Vec<String>| {
                r.windows(2)
                    .any(|w| w[0] == "--comment" && OUR_HOOK_COMMENTS.contains(&w[1].as_str()))
            };
            let mut kept: Vec<&Vec<String>> = Vec::new();
            for r in current.iter().copied().filter(|r| ours(r)) {
                let wanted = want.iter().any(|h| h.spec == *r);
                if wanted && !kept.contains(&r) {
                    kept.push(r);
                } else {
                    ipt.rule_op(table, "-D", chain, None, r)?;
                }
            }
            // Order constraint in nat PREROUTING: the restore rule must follow the jump.
            let mut moved = false;
            if table == "nat" && chain == "PREROUTING" && want.len() == 2 {
                let jump = kept.iter().position(|r| **r == want[0].spec);
                let restore = kept.iter().position(|r| **r == want[1].spec);
                if let (Some(j), Some(rp)) = (jump, restore)
                    && rp < j
                {
                    ipt.rule_op(table, "-D", chain, None, &want[1].spec)?;
                    moved = true;
                }
            }
            for h in &want {
                let present = kept.iter().any(|r| **r == h.spec);
                let must_readd = moved && h.spec == want[want.len() - 1].spec;
                if !present || must_readd {
                    ipt.rule_op(table, "-A", chain, None, &h.spec)?;
                }
            }
        }
    }

    // 4. With external SNAT, the connmark chain goes away entirely (datapath.md §11.4).
    if st.external_snat && nat.chains.contains(CONNMARK_CHAIN) {
        ipt.exec("nat", s(&["-F", CONNMARK_CHAIN]))?;
        ipt.exec("nat", s(&["-X", CONNMARK_CHAIN]))?;
    }

    // 5. Upstream v1.23 on nf_tables hosts keeps the egress connmark rules in an nftables table
    //    (`ip aws-cni`, datapath.md §11.5) instead of rules 9–13. We always use the iptables form,
    //    so after an in-place upgrade that table is a leftover of "the other backend": remove it
    //    once our rules are in place. No `nft` binary, or no such table: nothing to do.
    if runner
        .run("nft", &s(&["list", "table", "ip", NFT_TABLE]))
        .is_ok()
    {
        match runner.run("nft", &s(&["delete", "table", "ip", NFT_TABLE])) {
            Ok(_) => ipt
                .report
                .changes
                .push(format!("nft delete table ip {NFT_TABLE}")),
            Err(e) => tracing::warn!(error = %e, "could not remove upstream's nftables table"),
        }
    }

    // 6. Numbered chains of old versions (one chain per CIDR), once chain 0 no longer jumps to
    //    them (its stale jumps were deleted above).
    if nat.chains.contains("AWS-SNAT-CHAIN-1") {
        let old: Vec<String> = nat
            .chains
            .iter()
            .filter(|c| {
                [("AWS-SNAT-CHAIN-"), ("AWS-CONNMARK-CHAIN-")]
                    .iter()
                    .any(|p| {
                        c.strip_prefix(p)
                            .and_then(|n| n.parse::<u32>().ok())
                            .is_some_and(|n| n > 0)
                    })
            })
            .cloned()
            .collect();
        for c in &old {
            ipt.exec("nat", s(&["-F", c]))?;
        }
        for c in &old {
            ipt.exec("nat", s(&["-X", c]))?;
        }
    }
    Ok(ipt.report)
}

// ---------------------------------------------------------------------------------------------
// Links, addresses, routes, rules

fn parse_mac(mac: &str) -> Result<MacAddr, HostError> {
    mac.parse().map_err(|_| HostError::BadMac(mac.to_string()))
}

/// Find a link by MAC, retrying (a freshly attached ENI's device can appear late).
pub fn find_link_by_mac(
    nl: &mut Netlink,
    mac: &str,
    attempts: u32,
    interval: Duration,
) -> Result<aws_cni::netlink::Link, HostError> {
    let m = parse_mac(mac)?;
    let attempts = attempts.max(1);
    for n in 1..=attempts {
        if let Some(l) = nl.link_by_mac(m)? {
            return Ok(l);
        }
        if n < attempts {
            std::thread::sleep(interval);
        }
    }
    Err(HostError::LinkNotFound {
        mac: mac.to_string(),
        attempts,
    })
}

/// [`crate::eni::LinkProbe`] over netlink in the calling thread's namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetlinkLinkProbe;

impl crate::eni::LinkProbe for NetlinkLinkProbe {
    fn link_exists(&self, mac: &str) -> bool {
        let Ok(m) = parse_mac(mac) else { return false };
        Netlink::open()
            .and_then(|mut nl| nl.link_by_mac(m))
            .is_ok_and(|l| l.is_some())
    }
}

/// Node-level settings (datapath.md §6, §8).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSettings {
    /// MAC of the primary ENI (IMDS `mac`).
    pub primary_mac: String,
    /// `AWS_VPC_ENI_MTU`.
    pub mtu: u32,
    /// `AWS_VPC_K8S_CNI_CONNMARK`.
    pub connmark: u32,
    /// `AWS_VPC_CNI_NODE_PORT_SUPPORT`.
    pub node_port_support: bool,
    /// `AWS_VPC_K8S_CNI_EXTERNALSNAT`.
    pub external_snat: bool,
    /// `AWS_EXTERNAL_SERVICE_CIDRS`.
    pub external_service_cidrs: Vec<Ipv4Net>,
    /// Tries to find the primary link (upstream 5).
    pub link_attempts: u32,
    /// Pause between tries (upstream 3 s).
    pub link_interval: Duration,
}

/// What [`setup_node`] found and changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    /// Name of the primary ENI link (for the iptables rules).
    pub primary_if: String,
    /// Whether `net.ipv4.ip_forward` had to be turned on.
    pub enabled_ip_forward: bool,
}

/// Node set-up at start (datapath.md §6 steps 1, 2, 9 and §8): primary ENI MTU, rp_filter loose
/// on it, ip_forward, the prio-1024 fwmark rule, the prio-1535 external-service rules.
pub fn setup_node(
    nl: &mut Netlink,
    sysctl: &dyn Sysctl,
    st: &NodeSettings,
) -> Result<NodeReport, HostError> {
    let link = find_link_by_mac(nl, &st.primary_mac, st.link_attempts, st.link_interval)?;
    if link.mtu != st.mtu {
        nl.set_mtu(link.index, st.mtu)?;
    }
    // Loose reverse-path filtering: replies to pods on secondary ENIs can arrive on the primary
    // (fwmark rule) and strict mode would drop them.
    sysctl.set(&format!("net/ipv4/conf/{}/rp_filter", link.name), "2")?;
    let enabled_ip_forward = sysctl.set("net/ipv4/ip_forward", "1")?;
    if enabled_ip_forward {
        tracing::warn!("net.ipv4.ip_forward was 0; set it to 1 (pods cannot be routed without it)");
    }

    // fwmark rule: replace a rule with an old mark, without a window where none exists.
    let want_fwmark = st.node_port_support || !st.external_snat;
    let desired = Rule::lookup(false, TABLE_MAIN, PRIO_FWMARK).fwmark(st.connmark, st.connmark);
    for r in nl.rules(false)? {
        if r.priority == Some(PRIO_FWMARK)
            && r.table == TABLE_MAIN
            && r.fwmark.is_some()
            && (!want_fwmark || !desired.matches(&r))
        {
            nl.del_rules_all(&r)?;
        }
    }
    if want_fwmark {
        nl.add_rule(&desired)?;
    }

    // External service CIDRs (prio 1535): exactly the configured set.
    let want: BTreeSet<Ipv4Net> = st.external_service_cidrs.iter().copied().collect();
    let mut have = BTreeSet::new();
    for r in nl.rules(false)? {
        if r.priority != Some(PRIO_EXTERNAL_SERVICE) || r.table != TABLE_MAIN {
            continue;
        }
        match r.dst {
            Some(IpNet::V4(d)) if want.contains(&d) && r.src.is_none() && r.fwmark.is_none() => {
                have.insert(d);
            }
            _ => {
                nl.del_rules_all(&r)?;
            }
        }
    }
    for c in want.difference(&have) {
        nl.add_rule(&Rule::lookup(false, TABLE_MAIN, PRIO_EXTERNAL_SERVICE).to(IpNet::V4(*c)))?;
    }
    Ok(NodeReport {
        primary_if: link.name,
        enabled_ip_forward,
    })
}

/// Route table of an ENI on card 0: device N ≥ 1 → N + 1 (datapath.md §5).
pub fn eni_table(device_number: u32) -> u32 {
    if device_number == 0 {
        TABLE_MAIN
    } else {
        device_number + 1
    }
}

/// One secondary ENI to set up (datapath.md §7).
#[derive(Debug, Clone, PartialEq)]
pub struct EniHost {
    /// MAC of the ENI.
    pub mac: String,
    /// ENI primary IPv4.
    pub primary_ip: Ipv4Addr,
    /// Subnet CIDR (IMDS `subnet-ipv4-cidr-block`).
    pub subnet: Ipv4Net,
    /// Route table ([`eni_table`]).
    pub table: u32,
    /// `AWS_VPC_ENI_MTU`.
    pub mtu: u32,
    /// Tries to find the link (upstream 5).
    pub link_attempts: u32,
    /// Pause between tries (upstream 3 s).
    pub link_interval: Duration,
}

/// Set up one secondary ENI: link up with MTU, exactly its primary address, table with gateway
/// and default route, main-table connected route removed, `from <ip> lookup T prio 32765`.
/// Returns the link name.
pub fn setup_eni(nl: &mut Netlink, e: &EniHost) -> Result<String, HostError> {
    let link = find_link_by_mac(nl, &e.mac, e.link_attempts, e.link_interval)?;
    if link.mtu != e.mtu {
        nl.set_mtu(link.index, e.mtu)?;
    }
    if !link.up {
        nl.set_up(link.index)?;
    }
    let want = IpNet::V4(
        Ipv4Net::new(e.primary_ip, e.subnet.prefix_len())
            .map_err(|_| NlError::Invalid(format!("bad prefix for {}", e.primary_ip)))?,
    );
    // Exactly one global IPv4 address: ours (a DHCP client or a previous run may have put
    // others there). IPv6 link-local stays.
    let mut present = false;
    for a in nl.addresses(Some(link.index))? {
        if let IpNet::V4(_) = a.addr {
            if a.addr == want {
                present = true;
            } else {
                nl.del_address(link.index, a.addr)?;
            }
        }
    }
    if !present {
        nl.add_address(link.index, want)?;
    }
    let gw = IpAddr::V4(Ipv4Addr::from(
        u32::from(e.subnet.network()).wrapping_add(1),
    ));
    // Replace (not add) so a stale route via another device or gateway is corrected in place.
    nl.replace_route(&Route::host(gw, link.index, e.table))?;
    nl.replace_route(&Route::default_via(gw, link.index, e.table))?;
    // Remove the kernel's connected route so the subnet is not reachable via this ENI from main.
    let connected = Route::link_scope(IpNet::V4(e.subnet.trunc()), link.index, TABLE_MAIN);
    match nl.del_route(&connected) {
        Ok(_) => {}
        Err(err) if err.is_absent() => {}
        Err(err) => return Err(err.into()),
    }
    // Exactly one prio-32765 rule for this address, to our table.
    let desired =
        Rule::lookup(false, e.table, PRIO_ENI).from(IpNet::V4(Ipv4Net::from(e.primary_ip)));
    for r in nl.rules(false)? {
        if r.priority == Some(PRIO_ENI) && r.src == desired.src && !desired.matches(&r) {
            nl.del_rules_all(&r)?;
        }
    }
    nl.add_rule(&desired)?;
    Ok(link.name)
}

/// After an ENI is detached: delete every `from <ENI primary IP>/32` rule (any table/priority
/// the daemon uses for it) and flush its table's routes.
pub fn teardown_eni(
    nl: &mut Netlink,
    primary_ip: Ipv4Addr,
    table: u32,
) -> Result<usize, HostError> {
    let src = Some(IpNet::V4(Ipv4Net::from(primary_ip)));
    let mut n = 0;
    for r in nl.rules(false)? {
        if r.src == src && r.priority == Some(PRIO_ENI) {
            n += nl.del_rules_all(&r)?;
        }
    }
    if table != TABLE_MAIN {
        for r in nl.routes(false, Some(table))? {
            if let Ok(Deleted::Removed) = nl.del_route(&r) {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// A pod address and the table its egress uses (254 for the primary ENI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodRule {
    /// Pod IPv4.
    pub ip: Ipv4Addr,
    /// Its ENI's table.
    pub table: u32,
}

/// What [`reapply_pod_rules`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRuleReport {
    /// Rules added back (something had removed them).
    pub added: Vec<String>,
    /// Rules removed (wrong table, duplicates, or pods no longer assigned when pruning).
    pub removed: Vec<String>,
}

/// Make the per-pod rules match the datastore's assignments: `to <ip>/32 lookup main prio 512`
/// for every pod, `from <ip>/32 lookup <T> prio 1536` for pods on secondary ENIs (exactly one).
/// With `prune`, 512/1536 rules for addresses not in `pods` are removed too (only call with a
/// complete assignment list, i.e. not while an ADD may be between datastore and plugin).
pub fn reapply_pod_rules(
    nl: &mut Netlink,
    pods: &[PodRule],
    prune: bool,
) -> Result<PodRuleReport, HostError> {
    let mut rep = PodRuleReport::default();
    let want: BTreeMap<Ipv4Addr, u32> = pods.iter().map(|p| (p.ip, p.table)).collect();
    let rules = nl.rules(false)?;
    let mut have_to: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut have_from: BTreeSet<Ipv4Addr> = BTreeSet::new();
    for r in &rules {
        let host = |n: &Option<IpNet>| match n {
            Some(IpNet::V4(v)) if v.prefix_len() == 32 => Some(v.addr()),
            _ => None,
        };
        match r.priority {
            Some(PRIO_TO_POD) if r.src.is_none() && r.fwmark.is_none() => {
                let Some(ip) = host(&r.dst) else { continue };
                if want.contains_key(&ip) && r.table == TABLE_MAIN {
                    have_to.insert(ip);
                } else if prune || r.table != TABLE_MAIN {
                    nl.del_rules_all(r)?;
                    rep.removed.push(r.to_string());
                }
            }
            Some(PRIO_FROM_POD) if r.dst.is_none() && r.fwmark.is_none() => {
                let Some(ip) = host(&r.src) else { continue };
                match want.get(&ip) {
                    Some(t) if *t == r.table && *t != TABLE_MAIN => {
                        have_from.insert(ip);
                    }
                    Some(_) => {
                        nl.del_rules_all(r)?;
                        rep.removed.push(r.to_string());
                    }
                    None if prune => {
                        nl.del_rules_all(r)?;
                        rep.removed.push(r.to_string());
                    }
                    None => {}
                }
            }
            _ => {}
        }
    }
    for (ip, table) in &want {
        let net = IpNet::V4(Ipv4Net::from(*ip));
        if !have_to.contains(ip) {
            let r = Rule::lookup(false, TABLE_MAIN, PRIO_TO_POD).to(net);
            if nl.add_rule(&r)? == Created::Created {
                rep.added.push(r.to_string());
            }
        }
        if *table != TABLE_MAIN && !have_from.contains(ip) {
            let r = Rule::lookup(false, *table, PRIO_FROM_POD).from(net);
            if nl.add_rule(&r)? == Created::Created {
                rep.added.push(r.to_string());
            }
        }
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn st() -> SnatSettings {
        SnatSettings {
            external_snat: false,
            exclude_snat_cidrs: vec!["192.168.0.0/16".parse().unwrap()],
            randomize: RandomizeSnat::Prng,
            random_fully_supported: true,
            node_port_support: true,
            connmark: 0x80,
            veth_prefix: "eni".into(),
            primary_if: "eth0".into(),
            node_ip: Ipv4Addr::new(10, 0, 1, 10),
            vpc_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
        }
    }

    #[test]
    fn split_rule_honours_quotes() {
        assert_eq!(
            split_rule(r#"-A X -d 10.0.0.0/16 -m comment --comment "AWS SNAT CHAIN" -j RETURN"#),
            s(&[
                "-A",
                "X",
                "-d",
                "10.0.0.0/16",
                "-m",
                "comment",
                "--comment",
                "AWS SNAT CHAIN",
                "-j",
                "RETURN"
            ])
        );
        assert_eq!(
            split_rule(r#"--comment "a \"b\" c""#),
            s(&["--comment", r#"a "b" c"#])
        );
        assert_eq!(split_rule(r#"--comment """#), s(&["--comment", ""]));
    }

    #[test]
    fn randomize_parsing() {
        assert_eq!(
            RandomizeSnat::parse("hashrandom"),
            RandomizeSnat::HashRandom
        );
        assert_eq!(RandomizeSnat::parse("none"), RandomizeSnat::None);
        assert_eq!(RandomizeSnat::parse("prng"), RandomizeSnat::Prng);
        assert_eq!(RandomizeSnat::parse("bogus"), RandomizeSnat::Prng);
    }

    #[test]
    fn snat_chain_rules_match_upstream_text() {
        let mut x = st();
        x.exclude_snat_cidrs.push("0.0.0.0/0".parse().unwrap());
        let v: Vec<String> = desired_snat_chain(&x).iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            v,
            vec![
                "-d 10.0.0.0/16 -m comment --comment AWS SNAT CHAIN -j RETURN",
                "-d 192.168.0.0/16 -m comment --comment AWS SNAT CHAIN EXCLUSION -j RETURN",
                "-m comment --comment AWS SNAT CHAIN EXCLUSION -j RETURN",
                "! -o vlan+ -m comment --comment AWS, SNAT -m addrtype ! --dst-type LOCAL -j SNAT --to-source 10.0.1.10 --random-fully",
            ]
        );
        x.random_fully_supported = false;
        assert!(
            desired_snat_chain(&x)
                .last()
                .unwrap()
                .ends_with(&["--random".to_string()])
        );
        x.randomize = RandomizeSnat::None;
        assert!(
            desired_snat_chain(&x)
                .last()
                .unwrap()
                .ends_with(&["10.0.1.10".to_string()])
        );
        x.external_snat = true;
        assert!(desired_snat_chain(&x).is_empty());
        assert!(desired_connmark_chain(&x).is_empty());
    }

    #[test]
    fn connmark_chain_and_mark_rendering() {
        let mut x = st();
        x.connmark = 0x4000;
        let v: Vec<String> = desired_connmark_chain(&x)
            .iter()
            .map(|r| r.join(" "))
            .collect();
        assert_eq!(
            v,
            vec![
                "-d 10.0.0.0/16 -m comment --comment AWS CONNMARK CHAIN -j RETURN",
                "-d 192.168.0.0/16 -m comment --comment AWS CONNMARK CHAIN -j RETURN",
                "-m comment --comment AWS, CONNMARK -j CONNMARK --set-xmark 0x4000/0x4000",
            ]
        );
    }

    #[test]
    fn hook_rules_follow_switches() {
        let count = |x: &SnatSettings| desired_hook_rules(x).len();
        let mut x = st();
        assert_eq!(count(&x), 6, "postrouting jump, 3 mangle, 2 nat prerouting");
        x.node_port_support = false;
        assert_eq!(count(&x), 4, "postrouting, veth restore, 2 nat prerouting");
        x.external_snat = true;
        assert_eq!(count(&x), 0);
        x.node_port_support = true;
        let v = desired_hook_rules(&x);
        assert_eq!(v.len(), 3);
        assert!(v.iter().all(|h| h.table == "mangle"));
    }

    #[test]
    fn fresh_node_commands() {
        let r = RecordingRunner::default();
        r.reply(
            "iptables-save -t nat",
            Ok("*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"),
        );
        r.reply(
            "iptables-save -t mangle",
            Ok("*mangle\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"),
        );
        r.reply(
            "nft list table ip aws-cni",
            Err("Error: No such file or directory"),
        );
        let rep = reconcile_iptables(&r, &st()).unwrap();
        let calls = r.calls();
        assert_eq!(calls[0], "iptables-save -t nat");
        assert!(calls.contains(&"iptables -w -t nat -N AWS-SNAT-CHAIN-0".to_string()));
        assert!(calls.contains(&"iptables -w -t nat -N AWS-CONNMARK-CHAIN-0".to_string()));
        assert!(calls.contains(
            &"iptables -w -t nat -A AWS-SNAT-CHAIN-0 ! -o vlan+ -m comment --comment \"AWS, SNAT\" -m addrtype ! --dst-type LOCAL -j SNAT --to-source 10.0.1.10 --random-fully".to_string()
        ));
        assert!(calls.contains(
            &"iptables -w -t nat -I AWS-SNAT-CHAIN-0 1 -d 10.0.0.0/16 -m comment --comment \"AWS SNAT CHAIN\" -j RETURN".to_string()
        ));
        // nat PREROUTING: jump appended before the restore rule.
        let j = calls
            .iter()
            .position(|c| {
                c.contains(
                    "-A PREROUTING -i eni+ -m comment --comment \"AWS, outbound connections\"",
                )
            })
            .unwrap();
        let rs = calls
            .iter()
            .position(|c| c.contains("-t nat -A PREROUTING -m comment --comment \"AWS, CONNMARK\""))
            .unwrap();
        assert!(j < rs);
        assert!(
            !calls.iter().any(|c| c.contains(" -D ")),
            "nothing to delete on a fresh node"
        );
        assert_eq!(
            rep.changes.len(),
            calls.len() - 3,
            "all but the 2 saves and the nft probe"
        );
    }

    #[test]
    fn converged_node_is_left_alone_and_stale_rules_go() {
        let x = st();
        let mut nat = String::from(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:AWS-SNAT-CHAIN-0 - [0:0]\n:AWS-CONNMARK-CHAIN-0 - [0:0]\n",
        );
        let quote = |r: &Vec<String>| {
            r.iter()
                .map(|t| {
                    if t.contains(' ') {
                        format!("\"{t}\"")
                    } else {
                        t.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        for h in desired_hook_rules(&x).iter().filter(|h| h.table == "nat") {
            nat.push_str(&format!("-A {} {}\n", h.chain, quote(&h.spec)));
        }
        for r in desired_snat_chain(&x) {
            nat.push_str(&format!("-A {SNAT_CHAIN} {}\n", quote(&r)));
        }
        for r in desired_connmark_chain(&x) {
            nat.push_str(&format!("-A {CONNMARK_CHAIN} {}\n", quote(&r)));
        }
        let mut mangle = String::from("*mangle\n:PREROUTING ACCEPT [0:0]\n");
        for h in desired_hook_rules(&x)
            .iter()
            .filter(|h| h.table == "mangle")
        {
            mangle.push_str(&format!("-A {} {}\n", h.chain, quote(&h.spec)));
        }
        let r = RecordingRunner::default();
        r.reply("iptables-save -t nat", Ok(&nat));
        r.reply("iptables-save -t mangle", Ok(&mangle));
        r.reply("nft list", Err("Error: No such file or directory"));
        let rep = reconcile_iptables(&r, &x).unwrap();
        assert_eq!(rep.changes, Vec::<String>::new(), "converged: no change");

        // Add a stale CIDR rule, an old-mark mangle rule and a foreign rule.
        let nat2 = format!(
            "{nat}-A {SNAT_CHAIN} -d 172.16.0.0/12 -m comment --comment \"AWS SNAT CHAIN\" -j RETURN\n-A POSTROUTING -j KUBE-POSTROUTING\n"
        );
        let mangle2 = format!(
            "{mangle}-A PREROUTING -i eth0 -m comment --comment \"AWS, primary ENI\" -m addrtype --dst-type LOCAL --limit-iface-in -j CONNMARK --set-xmark 0x40/0x40\n"
        );
        let r = RecordingRunner::default();
        r.reply("iptables-save -t nat", Ok(&nat2));
        r.reply("iptables-save -t mangle", Ok(&mangle2));
        r.reply("nft list", Err("Error: No such file or directory"));
        let rep = reconcile_iptables(&r, &x).unwrap();
        assert_eq!(
            rep.changes,
            vec![
                "iptables -w -t nat -D AWS-SNAT-CHAIN-0 -d 172.16.0.0/12 -m comment --comment AWS SNAT CHAIN -j RETURN".to_string(),
                "iptables -w -t mangle -D PREROUTING -i eth0 -m comment --comment AWS, primary ENI -m addrtype --dst-type LOCAL --limit-iface-in -j CONNMARK --set-xmark 0x40/0x40".to_string(),
            ]
        );
    }

    #[test]
    fn iptables_version_detection() {
        let r = RecordingRunner::default();
        r.reply("iptables --version", Ok("iptables v1.8.9 (nf_tables)\n"));
        assert!(random_fully_supported(&r));
        r.reply("iptables --version", Ok("iptables v1.6.1\n"));
        assert!(!random_fully_supported(&r));
        r.reply("iptables --version", Err("not found"));
        assert!(!random_fully_supported(&r));
    }

    #[test]
    fn tables() {
        assert_eq!(eni_table(0), 254);
        assert_eq!(eni_table(1), 2);
        assert_eq!(eni_table(14), 15);
    }
}
