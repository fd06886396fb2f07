//! A proxy in front of a Caddy admin API that slows one method down and
//! counts config changes (see [`SlowAdmin`]).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::caddy_proc::read_head;

/// A proxy in front of a Caddy admin API that holds every request of one
/// method for a while before passing it on: it widens the window between an
/// adapter's read and its write, where concurrent changes can slip in.
/// Expects one request per connection, as the adapter sends them.
///
/// It also counts the requests that change the config (every method but GET,
/// and not `POST /adapt`, which only translates): each is one Caddy reload.
#[derive(Debug)]
pub struct SlowAdmin {
    pub url: String,
    writes: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl SlowAdmin {
    pub async fn start(admin_url: &str, method: &'static str, delay: Duration) -> SlowAdmin {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("binding the slow admin proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let target = admin_url.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let writes = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&writes);
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (target, counter) = (target.clone(), Arc::clone(&counter));
                tokio::spawn(async move {
                    let Ok(head) = read_head(&mut client).await else { return };
                    if !head.starts_with(b"GET ") && !head.starts_with(b"POST /adapt ") {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    if head.starts_with(format!("{method} ").as_bytes()) {
                        tokio::time::sleep(delay).await;
                    }
                    // Caddy checks the Host header against its own address.
                    let end = head.windows(4).position(|w| w == b"\r\n\r\n").map_or(head.len(), |i| i + 4);
                    let mut fixed: Vec<u8> = String::from_utf8_lossy(&head[..end])
                        .split_inclusive("\r\n")
                        .map(|line| {
                            if line.to_ascii_lowercase().starts_with("host:") {
                                format!("Host: {target}\r\n")
                            } else {
                                line.to_owned()
                            }
                        })
                        .collect::<String>()
                        .into_bytes();
                    fixed.extend_from_slice(&head[end..]);
                    let Ok(mut upstream) = TcpStream::connect(target.as_str()).await else { return };
                    if upstream.write_all(&fixed).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        SlowAdmin { url, writes, task }
    }

    /// Config changes sent through this proxy so far.
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }
}

impl Drop for SlowAdmin {
    fn drop(&mut self) {
        self.task.abort();
    }
}
