//! `max-pods`: how many pods a node of a given EC2 instance type can run under the VPC CNI.
//!
//! Accepts the flags of the EKS AMI's `max-pods-calculator.sh` and prints one integer, so it
//! can replace it in bootstrap scripts; adds `--all`, `--explain`, `--json`, `--from-ec2`,
//! `--trunk` and `--unmanaged-enis`. See docs/max-pods.md.

use awscni_limits::imds::Imds;
use awscni_limits::{
    CniVersion, InstanceType, MaxPods, Options, PdPolicy, close_matches, compute,
    eni_max_pods_lines, lookup,
};
use clap::{CommandFactory, FromArgMatches, Parser};
use std::process::ExitCode;
use std::time::Duration;

/// IMDS connect/read timeout: off EC2 the link-local address black-holes, fail fast.
const IMDS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Parser)]
#[command(
    name = "max-pods",
    about = "Max pods per node for an EC2 instance type under the VPC CNI",
    long_about = "Computes kubelet's --max-pods for an EC2 instance type under the VPC CNI:\n  \
        ENIs(default card) × (IPv4 per ENI − 1) + 2\n\
        with prefix delegation (×16 per slot, Nitro only), custom networking (−1 ENI), \
        --cni-max-eni, trunk and unmanaged ENIs, and the calculator's 110 / 250 (> 30 vCPUs) \
        recommendation cap. Prints one integer.\n\n\
        Exit status: 0 success, 1 any error (unknown type, bad flag, IMDS or EC2 failure)."
)]
struct Cli {
    /// Instance type to compute for, e.g. m5.large.
    #[arg(long, value_name = "TYPE", conflicts_with_all = ["instance_type_from_imds", "all"])]
    instance_type: Option<String>,

    /// Read the instance type from IMDSv2 (endpoint: $AWS_EC2_METADATA_SERVICE_ENDPOINT or
    /// http://169.254.169.254).
    #[arg(long, conflicts_with = "all")]
    instance_type_from_imds: bool,

    /// Print every known type as `<instance-type> <max-pods>` lines, sorted (the format of
    /// eni-max-pods.txt; values are uncapped, as in that file).
    #[arg(long)]
    all: bool,

    /// CNI version (x.y.z); prefix delegation counts only above 1.8. Optional here (the
    /// calculator requires it); when omitted, the current version is assumed.
    #[arg(long, value_name = "VERSION", value_parser = parse_version)]
    cni_version: Option<CniVersion>,

    /// Custom networking: the primary ENI carries no pod IPs (ENIs − 1).
    #[arg(long)]
    cni_custom_networking_enabled: bool,

    /// Prefix delegation: each secondary address slot holds a /28 (×16). Nitro types only.
    #[arg(long)]
    cni_prefix_delegation_enabled: bool,

    /// MAX_ENI: use at most N ENIs (N ≥ 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    cni_max_eni: Option<u32>,

    /// Print the uncapped value instead of the 110 / 250 recommendation.
    #[arg(long)]
    show_max_allowed: bool,

    /// Reserve one ENI for the trunk (security groups for pods).
    #[arg(long)]
    trunk: bool,

    /// Subtract N ENIs not managed by the CNI (tagged node.k8s.amazonaws.com/no_manage).
    #[arg(long, value_name = "N", default_value_t = 0)]
    unmanaged_enis: u32,

    /// Show the arithmetic (ENIs, IPs per ENI, reservations, +2, cap); the last line is the value.
    #[arg(long, conflicts_with = "json")]
    explain: bool,

    /// Print the result with its breakdown as JSON.
    #[arg(long)]
    json: bool,

    /// Ask a live DescribeInstanceTypes instead of the built-in table (AWS credentials and
    /// region from the usual environment/profile; endpoint from --endpoint-url,
    /// $AWS_ENDPOINT_URL_EC2 or $AWS_ENDPOINT_URL).
    #[arg(long)]
    from_ec2: bool,

    /// EC2 endpoint for --from-ec2 (e.g. the vpcsim emulator).
    #[arg(long, value_name = "URL", requires = "from_ec2")]
    endpoint_url: Option<String>,

    /// AWS region for --from-ec2 (default: environment/profile, then IMDS with
    /// --instance-type-from-imds, then us-east-1).
    #[arg(long, value_name = "REGION")]
    region: Option<String>,

    /// AWS profile for --from-ec2 (accepted for calculator compatibility).
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
}

fn version_string() -> String {
    let src = awscni_limits::source();
    format!(
        "{} (instance-type table: {} types, source {} {})",
        env!("CARGO_PKG_VERSION"),
        awscni_limits::all().len(),
        src.kind,
        src.version
    )
}

fn parse_version(s: &str) -> Result<CniVersion, String> {
    CniVersion::parse(s)
}

/// A CLI failure: the message for stderr.
struct Fail(String);

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail(e.to_string())
    }
}

fn main() -> ExitCode {
    // The version names the table's source; clap wants a 'static string for it, and this
    // process is short-lived, so leaking one small string is fine.
    let version: &'static str = Box::leak(version_string().into_boxed_str());
    let parsed = Cli::command()
        .version(version)
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => {
            // --help / --version go to stdout with status 0; every usage error exits 1, like
            // the calculator script (bootstrap scripts only distinguish zero from non-zero).
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg)) => {
            eprintln!("max-pods: error: {msg}");
            ExitCode::from(1)
        }
    }
}

fn options(cli: &Cli) -> Options {
    Options {
        max_eni: cli.cni_max_eni,
        unmanaged_enis: cli.unmanaged_enis,
        custom_networking: cli.cni_custom_networking_enabled,
        prefix_delegation: cli.cni_prefix_delegation_enabled,
        trunk: cli.trunk,
        // The calculator's rule (what kubelet sizing has always used): PD only on
        // hypervisor=nitro and CNI > 1.8. Bare metal falls back to secondary IPs.
        pd_policy: PdPolicy::Calculator,
        cni_version: cli.cni_version,
    }
}

fn run(cli: &Cli) -> Result<(), Fail> {
    let opts = options(cli);
    if cli.all {
        return run_all(cli, &opts);
    }
    let mut region_from_imds = None;
    let name = if let Some(t) = &cli.instance_type {
        t.trim().to_string()
    } else if cli.instance_type_from_imds {
        let imds = Imds::from_env(IMDS_TIMEOUT)?;
        let token = imds.token()?;
        let t = imds.get(&token, "instance-type")?;
        if cli.from_ec2 {
            // The calculator takes the region from IMDS too; only needed for --from-ec2.
            region_from_imds = imds.get(&token, "placement/region").ok();
        }
        t
    } else {
        return Err(Fail(
            "give --instance-type TYPE, --instance-type-from-imds or --all (see --help)".into(),
        ));
    };
    if name.is_empty() {
        return Err(Fail("instance type is empty".into()));
    }

    let owned;
    let it: &InstanceType = if cli.from_ec2 {
        let mut found = from_ec2(cli, std::slice::from_ref(&name), region_from_imds)?;
        owned = found
            .drain(..)
            .find(|t| t.name == name)
            .ok_or_else(|| Fail(format!("DescribeInstanceTypes did not return {name:?}")))?;
        &owned
    } else {
        lookup(&name).ok_or_else(|| unknown_type(&name))?
    };

    let r = compute(it, &opts);
    if let Some(note) = r.pd_note {
        eprintln!("{}", note.message(it));
    }
    if cli.trunk && !it.likely_trunk_capable() {
        eprintln!(
            "note: {} is probably not trunk-capable (security groups for pods need a Nitro, \
             non-t type), so aws-node would reserve no trunk ENI; --trunk reserved one anyway",
            it.name
        );
    }
    let value = if cli.show_max_allowed {
        r.max_pods
    } else {
        r.recommended
    };
    if cli.json {
        println!("{}", json_one(&r, value, cli.from_ec2)?);
    } else if cli.explain {
        print!("{}", r.explain());
        println!("{value}");
    } else {
        println!("{value}");
    }
    Ok(())
}

fn run_all(cli: &Cli, opts: &Options) -> Result<(), Fail> {
    let fetched;
    let types: &[InstanceType] = if cli.from_ec2 {
        fetched = from_ec2(cli, &[], None)?;
        &fetched
    } else {
        awscni_limits::all()
    };
    if cli.json {
        let rows: Vec<MaxPods> = types.iter().map(|t| compute(t, opts)).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let mut out = eni_max_pods_lines(types, opts).join("\n");
        out.push('\n');
        print!("{out}");
    }
    if opts.prefix_delegation {
        let skipped = types
            .iter()
            .filter(|t| compute(t, opts).pd_note.is_some())
            .count();
        if skipped > 0 {
            eprintln!(
                "note: prefix delegation not applied to {skipped} non-nitro types (secondary-IP values shown)"
            );
        }
    }
    Ok(())
}

fn json_one(r: &MaxPods, value: u32, from_ec2: bool) -> Result<String, Fail> {
    let mut v = serde_json::to_value(r)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("value".into(), value.into());
        o.insert(
            "source".into(),
            if from_ec2 { "ec2" } else { "table" }.into(),
        );
    }
    Ok(serde_json::to_string_pretty(&v)?)
}

fn unknown_type(name: &str) -> Fail {
    let src = awscni_limits::source();
    let near = close_matches(name, 5);
    let hint = if near.is_empty() {
        String::new()
    } else {
        format!("; did you mean: {}?", near.join(", "))
    };
    Fail(format!(
        "unknown instance type {name:?} (not among the {} types of the built-in table, \
         source {} {}){hint} (--from-ec2 asks EC2 directly)",
        awscni_limits::all().len(),
        src.kind,
        src.version
    ))
}

#[cfg(feature = "ec2")]
fn from_ec2(
    cli: &Cli,
    names: &[String],
    region_from_imds: Option<String>,
) -> Result<Vec<InstanceType>, Fail> {
    use aws_config::meta::region::RegionProviderChain;
    use aws_config::timeout::TimeoutConfig;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let fallback = region_from_imds.unwrap_or_else(|| "us-east-1".to_string());
        let region =
            RegionProviderChain::first_try(cli.region.clone().map(aws_config::Region::new))
                .or_default_provider()
                .or_else(aws_config::Region::new(fallback));
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(region)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_timeout(Duration::from_secs(60))
                    .build(),
            );
        if let Some(p) = &cli.profile {
            loader = loader.profile_name(p);
        }
        if let Some(u) = &cli.endpoint_url {
            loader = loader.endpoint_url(u);
        }
        let conf = loader.load().await;
        let client = aws_sdk_ec2::Client::new(&conf);
        awscni_limits::ec2::describe(&client, names)
            .await
            .map_err(Fail::from)
    })
}

#[cfg(not(feature = "ec2"))]
fn from_ec2(
    _cli: &Cli,
    _names: &[String],
    _region_from_imds: Option<String>,
) -> Result<Vec<InstanceType>, Fail> {
    Err(Fail(
        "--from-ec2 needs max-pods built with the `ec2` feature".into(),
    ))
}
