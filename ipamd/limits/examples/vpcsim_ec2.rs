//! Serves the vpcsim EC2 API on loopback and prints its URL, for running
//! `scripts/gen-instance-types.py --endpoint-url URL` or `max-pods --from-ec2 --endpoint-url URL`
//! by hand. Runs until killed.
//!
//! `cargo run -p awscni-limits --example vpcsim_ec2`

fn main() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let sim = vpcsim::Sim::new(vpcsim::SimConfig::default());
        let ep = sim.serve_loopback().await?;
        println!("{}", ep.ec2_url());
        std::future::pending::<()>().await;
        Ok(())
    })
}
