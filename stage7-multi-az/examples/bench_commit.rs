//! What a synchronous standby costs a commit.
//!
//! Run with `scripts/bench-stage7` (as root: it builds the zones), or
//! `cargo run -p stage7 --example bench_commit -- [commits] [rounds]`.
//!
//! For each round, and for each mode in turn (so that both see the same
//! machine), a fresh primary in zone a with its standby in zone b; from the
//! `region` machine, one connection commits single-row inserts one after
//! another (each its own transaction, as a shop's writes are), and the
//! time of each commit is recorded. Prints a Markdown table of medians
//! over the rounds.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use stage7::netns;
use stage7::postgres_ha::{NodeName, PostgresHa, Replication};
use stage7::region::{A_DATA_HOST, B_DATA_HOST, NetworkChoice, REGION_HOST, Region, Zone};
use stage7::security_groups::Group;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Round {
    p50: Duration,
    p99: Duration,
    per_second: f64,
}

async fn measure(replication: Replication, commits: usize) -> Result<Round, BoxError> {
    let region = Region::create(NetworkChoice::Namespaces)?;
    let client = region.add_machine("region", Zone::Region, REGION_HOST, Group::Data)?;
    let a = region.add_machine("a-data", Zone::A, A_DATA_HOST, Group::Data)?;
    let b = region.add_machine("b-data", Zone::B, B_DATA_HOST, Group::Data)?;
    let pg = PostgresHa::start(a, b, replication).await?;
    let url = pg.url_of(NodeName::A);
    let timings = netns::run(client.netns.as_deref(), move || {
        Box::pin(async move {
            let mut connection = PgConnection::connect(&url).await?;
            sqlx::raw_sql("CREATE TABLE orders (id serial PRIMARY KEY, note text)")
                .execute(&mut connection)
                .await?;
            let mut timings = Vec::with_capacity(commits);
            for i in 0..commits + commits / 10 {
                let started = Instant::now();
                sqlx::query("INSERT INTO orders (note) VALUES ($1)")
                    .bind("a scarf")
                    .execute(&mut connection)
                    .await?;
                // The first tenth warms up (connections, caches).
                if i >= commits / 10 {
                    timings.push(started.elapsed());
                }
            }
            Ok::<_, sqlx::Error>(timings)
        })
    })
    .await??;
    let mut sorted = timings.clone();
    sorted.sort();
    let total: Duration = timings.iter().sum();
    Ok(Round {
        p50: sorted[sorted.len() / 2],
        p99: sorted[sorted.len() * 99 / 100],
        per_second: timings.len() as f64 / total.as_secs_f64(),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let commits: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2000);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let modes = [Replication::Synchronous, Replication::Asynchronous];
    let mut results: Vec<Vec<Round>> = modes.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        for (mode, out) in modes.iter().zip(results.iter_mut()) {
            let measured = measure(*mode, commits).await?;
            eprintln!(
                "round {round}, {mode:?}: p50 {:.3} ms, p99 {:.3} ms, {:.0} commits/s",
                measured.p50.as_secs_f64() * 1e3,
                measured.p99.as_secs_f64() * 1e3,
                measured.per_second
            );
            out.push(measured);
        }
    }
    println!("| standby | commit p50 (ms) | commit p99 (ms) | commits/s (one connection) |");
    println!("| --- | ---: | ---: | ---: |");
    for (mode, rounds) in modes.iter().zip(&results) {
        let ms = |f: fn(&Round) -> Duration| {
            median(rounds.iter().map(|r| f(r).as_secs_f64() * 1e3).collect())
        };
        println!(
            "| {} | {:.3} | {:.3} | {:.0} |",
            match mode {
                Replication::Synchronous => "synchronous (the default)",
                Replication::Asynchronous => "asynchronous (--async-standby)",
            },
            ms(|r| r.p50),
            ms(|r| r.p99),
            median(rounds.iter().map(|r| r.per_second).collect())
        );
    }
    let ratios: Vec<f64> = results[0]
        .iter()
        .zip(&results[1])
        .map(|(sync, asynchronous)| sync.p50.as_secs_f64() / asynchronous.p50.as_secs_f64())
        .collect();
    let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!(
        "\nSynchronous / asynchronous commit p50, median of the per-round ratios: {:.2} (rounds: {}).",
        median(ratios.clone()),
        listed.join(" ")
    );
    Ok(())
}
