//! `specula doctor`: what this machine has for the CUDA backend.

use anyhow::Result;

pub fn run() -> Result<()> {
    let checks = kernels::doctor::checks();
    let mut missing = 0;
    for (name, result) in &checks {
        match result {
            Ok(detail) => println!("ok       {name}: {detail}"),
            Err(advice) => {
                missing += 1;
                println!("MISSING  {name}: {advice}");
            }
        }
    }
    if missing == 0 {
        println!("CUDA is ready: --device auto will use the GPU");
    } else {
        println!("the CUDA backend is not usable here; --device auto runs on the CPU");
    }
    Ok(())
}
