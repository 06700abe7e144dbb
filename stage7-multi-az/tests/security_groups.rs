//! Security groups, proved both ways: every rule lets in what it names
//! and nothing else, on real nftables rules in real namespaces.

mod support;

use std::net::SocketAddr;

use stage7::region::{A_DATA_HOST, REGION_HOST, Zone};
use stage7::security_groups::Group;
use support::{Probe, listen_in, probe_from_host, probe_from_machine, region};

#[tokio::test]
async fn security_groups_block_what_they_should() {
    let region = region();
    let a1 = region.instance_machine(0).expect("a1");
    let data = region
        .add_machine("a-data", Zone::A, A_DATA_HOST, Group::Data)
        .expect("a-data");
    for port in [3000, 9999] {
        listen_in(&a1, port).await;
    }
    for port in [5432, 6379, 26379, 9999] {
        listen_in(&data, port).await;
    }
    let instance = SocketAddr::from((a1.address, 3000));
    let postgres = SocketAddr::from((data.address, 5432));
    let redis = SocketAddr::from((data.address, 6379));

    // A shopper on the host reaches neither an instance nor the data tier:
    // only the balancer's address is in sg-lb.
    assert_eq!(
        probe_from_host(region.shopper_address(), instance).await,
        Probe::TimedOut,
        "shopper → instance"
    );
    assert_eq!(
        probe_from_host(region.shopper_address(), redis).await,
        Probe::TimedOut,
        "shopper → Redis"
    );
    // The balancer reaches the instances, not the database.
    assert_eq!(
        probe_from_host(region.balancer_address(), postgres).await,
        Probe::TimedOut,
        "balancer → PostgreSQL"
    );
    // sg-app opens the shop port only: not another port on the instance.
    assert_eq!(
        probe_from_host(
            region.balancer_address(),
            SocketAddr::from((a1.address, 9999))
        )
        .await,
        Probe::TimedOut,
        "balancer → instance:9999"
    );
    // sg-data opens the data ports only, and not to the data tier's
    // clients' other ports; the data tier cannot call the instances.
    assert_eq!(
        probe_from_machine(&a1, SocketAddr::from((data.address, 9999))).await,
        Probe::TimedOut,
        "instance → data:9999"
    );
    assert_eq!(
        probe_from_machine(&data, instance).await,
        Probe::TimedOut,
        "data → instance"
    );
}

#[tokio::test]
async fn security_groups_allow_what_they_should() {
    let region = region();
    let a1 = region.instance_machine(0).expect("a1");
    let data = region
        .add_machine("a-data", Zone::A, A_DATA_HOST, Group::Data)
        .expect("a-data");
    let control = region
        .add_machine("region", Zone::Region, REGION_HOST, Group::Data)
        .expect("region");
    listen_in(&a1, 3000).await;
    for port in [5432, 6379, 26379] {
        listen_in(&data, port).await;
    }
    let instance = SocketAddr::from((a1.address, 3000));

    assert_eq!(
        probe_from_host(region.balancer_address(), instance).await,
        Probe::Connected,
        "balancer → instance"
    );
    // Each of these also proves the rules stateful: the answer (SYN-ACK)
    // comes back into the instance, whose own group admits nothing from
    // the data tier; only `ct state established` lets it in.
    for port in [5432, 6379, 26379] {
        let to = SocketAddr::from((data.address, port));
        assert_eq!(
            probe_from_machine(&a1, to).await,
            Probe::Connected,
            "instance → data:{port}"
        );
        assert_eq!(
            probe_from_machine(&control, to).await,
            Probe::Connected,
            "sg-data → sg-data:{port}"
        );
    }

    // Scale-out: a new instance in zone b joins sg-app, and the data tier
    // lets it in at once: its address was added to the set, no rule changed.
    let b1 = region.instance_machine(1).expect("b1");
    assert_eq!(b1.zone, Zone::B);
    let postgres = SocketAddr::from((data.address, 5432));
    assert_eq!(
        probe_from_machine(&b1, postgres).await,
        Probe::Connected,
        "new instance → PostgreSQL"
    );
    // The new instance is let in by the balancer's rule at once too.
    listen_in(&b1, 3000).await;
    assert_eq!(
        probe_from_host(
            region.balancer_address(),
            SocketAddr::from((b1.address, 3000))
        )
        .await,
        Probe::Connected,
        "balancer → new instance"
    );
}
