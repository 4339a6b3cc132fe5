//! `grpc-health-probe`: checks a grpc.health.v1 service; exit 0 SERVING, 1 bad arguments,
//! 2 connection failure, 3 RPC failure, 4 not SERVING (upstream's codes).

use std::process::ExitCode;

use aws_vpc_cni_installer::probe::{self, EXIT_INVALID_ARGUMENTS, EXIT_RPC_FAILURE, Parsed};

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn main() -> ExitCode {
    let args: Vec<String> = match std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect::<Result<_, _>>()
    {
        Ok(a) => a,
        Err(bad) => {
            eprintln!("error: argument {bad:?} is not valid UTF-8");
            return exit(EXIT_INVALID_ARGUMENTS);
        }
    };
    let parsed = match probe::parse_args(&args) {
        Ok(Parsed::Help) => {
            eprintln!("{}", probe::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Run(a)) => a,
        Err(e) => {
            eprintln!("error: {e}\n{}", probe::USAGE);
            return exit(EXIT_INVALID_ARGUMENTS);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return exit(EXIT_RPC_FAILURE);
        }
    };
    exit(rt.block_on(probe::run(&parsed)))
}
