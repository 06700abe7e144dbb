//! A real engine's configuration, rendered from the templates in `deploy/`.
//!
//! The templates are plain nginx and HAProxy files a workshop host can
//! read; only the parts that depend on the stage are placeholders
//! (`{{balance}}`, `{{servers}}`, …), filled here. How each of our
//! balancer's choices maps onto the engines:
//!
//! | ours | nginx (open source) | HAProxy |
//! |---|---|---|
//! | round-robin | (default) | `balance roundrobin` |
//! | least-connections, least reported load | `least_conn` | `balance leastconn` |
//! | hashing `?room=` | `hash $arg_room consistent` | `balance url_param room` + `hash-type consistent` |
//! | sticky cookie (stage 2) | `hash $remote_addr consistent` | `cookie … insert indirect nocache` + `option redispatch` |
//! | active health checks | none: a failed request marks the server (`max_fails`) | `option httpchk GET /healthz` |
//!
//! nginx open source has no cookie stickiness (`sticky` is nginx Plus).
//! Hashing the shop's own cookie does not work either: a shopper's first
//! request has no cookie yet, so the instance that made the cart and the
//! one the cookie hashes to differ. Hashing the client's address pins every
//! shopper behind one address (an office NAT, every test on 127.0.0.1) to
//! one instance; consistent hashing moves only a share of them when an
//! instance comes or goes.

use lb::{HealthConfig, Policy};

/// The nginx template (`deploy/nginx/myclothes.conf.template`).
pub const NGINX_TEMPLATE: &str = include_str!("../../../deploy/nginx/myclothes.conf.template");
/// The HAProxy template (`deploy/haproxy/myclothes.cfg.template`).
pub const HAPROXY_TEMPLATE: &str = include_str!("../../../deploy/haproxy/myclothes.cfg.template");

/// The name of HAProxy's stickiness cookie (our balancer's is `lb_sticky`).
pub const HAPROXY_COOKIE: &str = "myclothes_server";

/// Which engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Nginx,
    Haproxy,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Self::Nginx => "nginx",
            Self::Haproxy => "haproxy",
        }
    }

    /// The Debian package that provides it.
    pub fn package(self) -> &'static str {
        self.name()
    }

    /// Where its own status page is, under the shop's URL.
    pub fn status_path(self) -> &'static str {
        match self {
            Self::Nginx => "/_nginx",
            Self::Haproxy => "/_haproxy",
        }
    }
}

/// One instance, as the engine sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// `i1`: HAProxy's server name (and stickiness cookie value).
    pub name: String,
    /// `127.0.0.1:3001`, or another machine's address.
    pub address: String,
}

/// Everything a rendered configuration depends on.
#[derive(Clone, Debug)]
pub struct Site {
    /// What the engine listens on: `127.0.0.1:8080`, or `*:8080` (every
    /// address, for a workshop's machines).
    pub listen: String,
    pub servers: Vec<Server>,
    pub policy: Policy,
    /// Pin each shopper to one instance (stage 2).
    pub sticky: bool,
    pub health: HealthConfig,
    /// Where the engine keeps its pid file and spill folders.
    pub run_dir: String,
}

impl Site {
    /// Renders `engine`'s configuration for this site.
    pub fn render(&self, engine: Engine) -> String {
        let (template, balance, servers) = match engine {
            Engine::Nginx => (NGINX_TEMPLATE, self.nginx_balance(), self.nginx_servers()),
            Engine::Haproxy => (
                HAPROXY_TEMPLATE,
                self.haproxy_balance(),
                self.haproxy_servers(),
            ),
        };
        template
            .replace("{{listen}}", &self.listen)
            .replace("{{run_dir}}", &self.run_dir)
            .replace("{{balance}}", &balance)
            .replace("{{servers}}", &servers)
            .replace(
                "{{check_interval}}",
                &format!("{}ms", self.health.interval.as_millis()),
            )
            .replace("{{fall}}", &self.health.fall.to_string())
            .replace("{{rise}}", &self.health.rise.to_string())
    }

    fn nginx_balance(&self) -> String {
        let line = if self.sticky {
            "        # Stage 2: one shopper, one instance. nginx open source has no\n        \
             # cookie stickiness; the client's address is hashed instead.\n        \
             hash $remote_addr consistent;"
        } else {
            match self.policy {
                Policy::RoundRobin => "        # Round-robin: nginx's default.",
                Policy::LeastConn | Policy::LeastLoad => "        least_conn;",
                Policy::HashParam => "        hash $arg_room consistent;",
            }
        };
        line.to_owned()
    }

    fn nginx_servers(&self) -> String {
        // Passive health: two failed requests take a server out for a
        // while. nginx open source cannot probe `/healthz` itself.
        let fail_timeout = (self.health.interval * self.health.rise.max(1))
            .as_secs()
            .max(1);
        self.servers
            .iter()
            .map(|s| {
                format!(
                    "        server {} max_fails={} fail_timeout={fail_timeout}s;  # {}",
                    s.address, self.health.fall, s.name
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn haproxy_balance(&self) -> String {
        let mut lines = vec![match self.policy {
            Policy::RoundRobin => "    balance roundrobin",
            Policy::LeastConn | Policy::LeastLoad => "    balance leastconn",
            Policy::HashParam => "    balance url_param room\n    hash-type consistent",
        }];
        if self.sticky {
            lines.push(
                "    # Stage 2: HAProxy adds a cookie naming the instance; a shopper\n    \
                 # whose instance is down is sent to another (option redispatch).",
            );
        }
        let mut text = lines.join("\n");
        if self.sticky {
            text.push_str(&format!(
                "\n    cookie {HAPROXY_COOKIE} insert indirect nocache httponly attr \"SameSite=Lax\""
            ));
        }
        text
    }

    fn haproxy_servers(&self) -> String {
        self.servers
            .iter()
            .map(|s| {
                let cookie = if self.sticky {
                    format!(" cookie {}", s.name)
                } else {
                    String::new()
                };
                format!("    server {} {} check{cookie}", s.name, s.address)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The ready-to-edit copies in `deploy/`: three instances on
/// 127.0.0.1:3001-3003, the engine on port 8080 of every address.
pub fn ready_made(engine: Engine, kind: ReadyMade) -> String {
    let (policy, sticky) = match kind {
        ReadyMade::RoundRobin => (Policy::RoundRobin, false),
        ReadyMade::Sticky => (Policy::RoundRobin, true),
        ReadyMade::Live => (Policy::LeastConn, false),
    };
    Site {
        listen: "*:8080".to_owned(),
        servers: (1..=3)
            .map(|n| Server {
                name: format!("i{n}"),
                address: format!("127.0.0.1:300{n}"),
            })
            .collect(),
        policy,
        sticky,
        health: crate::topology::TEACHING_HEALTH,
        run_dir: "/tmp/myclothes-".to_owned() + engine.name(),
    }
    .render(engine)
}

/// The ready-made configurations in `deploy/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadyMade {
    /// Stages 1, 3, 4, 5.
    RoundRobin,
    /// Stage 2.
    Sticky,
    /// Stage 6: WebSockets, least connections.
    Live,
}

impl ReadyMade {
    pub const ALL: [Self; 3] = [Self::RoundRobin, Self::Sticky, Self::Live];

    /// Its file in `deploy/<engine>/`.
    pub fn file_name(self, engine: Engine) -> String {
        let stem = match self {
            Self::RoundRobin => "round-robin",
            Self::Sticky => "sticky",
            Self::Live => "live",
        };
        match engine {
            Engine::Nginx => format!("{stem}.conf"),
            Engine::Haproxy => format!("{stem}.cfg"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled() {
        for engine in [Engine::Nginx, Engine::Haproxy] {
            for kind in ReadyMade::ALL {
                let text = ready_made(engine, kind);
                assert!(!text.contains("{{"), "{engine:?} {kind:?}:\n{text}");
            }
        }
    }

    #[test]
    fn the_ready_made_files_in_deploy_are_the_templates_rendered() {
        // Edit the template, then refresh the copies with
        // `UPDATE_DEPLOY=1 cargo test -p shop ready_made`.
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let update = std::env::var_os("UPDATE_DEPLOY").is_some();
        for engine in [Engine::Nginx, Engine::Haproxy] {
            for kind in ReadyMade::ALL {
                let path = deploy.join(engine.name()).join(kind.file_name(engine));
                if update {
                    std::fs::write(&path, ready_made(engine, kind)).expect("deploy/ is writable");
                }
                let on_disk = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(
                    on_disk,
                    ready_made(engine, kind),
                    "{} is stale: run UPDATE_DEPLOY=1 cargo test -p shop ready_made",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn stage_two_is_pinned_by_cookie_in_haproxy_and_by_address_in_nginx() {
        let haproxy = ready_made(Engine::Haproxy, ReadyMade::Sticky);
        assert!(haproxy.contains("cookie myclothes_server insert indirect nocache"));
        assert!(haproxy.contains("server i2 127.0.0.1:3002 check cookie i2"));
        assert!(haproxy.contains("option redispatch"));
        let nginx = ready_made(Engine::Nginx, ReadyMade::Sticky);
        assert!(nginx.contains("hash $remote_addr consistent;"));
        let round_robin = ready_made(Engine::Nginx, ReadyMade::RoundRobin);
        assert!(!round_robin.contains("hash "));
    }
}
