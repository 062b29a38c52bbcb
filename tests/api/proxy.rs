//! A small TCP proxy between mlq and Postgres, to cut or stall connections
//! on cue: a real network fault, with a real server on the other side.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Rules {
    /// Nothing passes either way on any connection.
    black_hole_all: AtomicBool,
    /// Nothing passes on connections that issued LISTEN.
    black_hole_listeners: AtomicBool,
    /// Nothing passes on connections that announced feed events.
    black_hole_announcers: AtomicBool,
    /// Cut the first connection that sends this marker and then a COMMIT:
    /// the COMMIT reaches Postgres, its answer never comes back.
    cut_after_commit: Mutex<Option<Vec<u8>>>,
    cuts: AtomicUsize,
}

pub struct PgProxy {
    pub port: u16,
    rules: Arc<Rules>,
}

impl PgProxy {
    /// Starts forwarding a free local port to Postgres at `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let rules = Arc::new(Rules::default());
        let shared = rules.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let rules = shared.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, rules).await;
                    }
                });
            }
        });
        Self { port, rules }
    }

    /// A Postgres URL through this proxy for `database`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn black_hole_all(&self, on: bool) {
        self.rules.black_hole_all.store(on, Ordering::SeqCst);
    }

    pub fn black_hole_listeners(&self, on: bool) {
        self.rules.black_hole_listeners.store(on, Ordering::SeqCst);
    }

    pub fn black_hole_announcers(&self, on: bool) {
        self.rules.black_hole_announcers.store(on, Ordering::SeqCst);
    }

    /// Arms a cut: the next connection to send `marker`, then COMMIT.
    pub fn cut_after_commit(&self, marker: &[u8]) {
        *self.rules.cut_after_commit.lock().unwrap() = Some(marker.to_vec());
    }

    /// How many armed cuts fired.
    pub fn cuts(&self) -> usize {
        self.rules.cuts.load(Ordering::SeqCst)
    }
}

/// State of one proxied connection.
#[derive(Default)]
struct Conn {
    listens: AtomicBool,
    announces: AtomicBool,
    marked: AtomicBool,
    dead: AtomicBool,
}

impl Conn {
    fn stalled(&self, rules: &Rules) -> bool {
        rules.black_hole_all.load(Ordering::SeqCst)
            || (rules.black_hole_listeners.load(Ordering::SeqCst)
                && self.listens.load(Ordering::SeqCst))
            || (rules.black_hole_announcers.load(Ordering::SeqCst)
                && self.announces.load(Ordering::SeqCst))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

async fn relay(client: TcpStream, server: TcpStream, rules: Arc<Rules>) {
    let conn = Arc::new(Conn::default());
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = {
        let (conn, rules) = (conn.clone(), rules.clone());
        async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = tokio::select! {
                    read = client_read.read(&mut buf) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    },
                    () = tokio::time::sleep(Duration::from_millis(50)) => {
                        if conn.dead.load(Ordering::SeqCst) { break; }
                        continue;
                    }
                };
                let chunk = &buf[..n];
                if contains(chunk, b"LISTEN ") {
                    conn.listens.store(true, Ordering::SeqCst);
                }
                // The announcer's statement (db::announcer).
                if contains(chunk, b"announce(") || contains(chunk, b"announce_owned(") {
                    conn.announces.store(true, Ordering::SeqCst);
                }
                let mut cut = false;
                {
                    let mut armed = rules.cut_after_commit.lock().unwrap();
                    if let Some(marker) = armed.as_ref() {
                        if contains(chunk, marker) {
                            conn.marked.store(true, Ordering::SeqCst);
                        }
                        if conn.marked.load(Ordering::SeqCst) && contains(chunk, b"COMMIT") {
                            *armed = None;
                            cut = true;
                        }
                    }
                }
                while conn.stalled(&rules) && !conn.dead.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if server_write.write_all(chunk).await.is_err() {
                    break;
                }
                if cut {
                    // The COMMIT is on its way; give it a moment to land,
                    // then drop the connection before its answer is relayed.
                    conn.dead.store(true, Ordering::SeqCst);
                    rules.cuts.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
            conn.dead.store(true, Ordering::SeqCst);
        }
    };
    let down = {
        let (conn, rules) = (conn.clone(), rules.clone());
        async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = tokio::select! {
                    read = server_read.read(&mut buf) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    },
                    () = tokio::time::sleep(Duration::from_millis(50)) => {
                        if conn.dead.load(Ordering::SeqCst) { break; }
                        continue;
                    }
                };
                while conn.stalled(&rules) && !conn.dead.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if conn.dead.load(Ordering::SeqCst)
                    || client_write.write_all(&buf[..n]).await.is_err()
                {
                    break;
                }
            }
            conn.dead.store(true, Ordering::SeqCst);
        }
    };
    tokio::join!(up, down);
}
