//! `echo-bench bulk`: CONNECTIONS TCP connections to `echo sink`, together
//! streaming TOTAL_BYTES (each TOTAL_BYTES / CONNECTIONS) in writes of
//! CHUNK_BYTES, then finishing; the sink answers each with the count it
//! read (8 bytes, little-endian), which must match. The clock runs from
//! when every connection is made until the last count has come back.

use alloc::rc::Rc;
use core::cell::Cell;
use core::time::Duration;
use libos::net::{Ipv4, TcpStream};
use libos::println;
use libos::task::{join_all, sleep, spawn};
use libos::time::Instant;

/// Streams `bytes` bytes, finishes and checks the sink's count; adds to `done` as it goes.
async fn stream(mut conn: TcpStream, bytes: u64, chunk: usize, done: Rc<Cell<u64>>) -> bool {
    let buf: alloc::vec::Vec<u8> = (0..chunk).map(|i| (i * 7) as u8).collect();
    let mut left = bytes;
    while left > 0 {
        let n = (left as usize).min(chunk);
        match conn.write(&buf[..n]).await {
            Ok(w) => {
                left -= w as u64;
                done.set(done.get() + w as u64);
            }
            Err(_) => return false,
        }
    }
    conn.shutdown();
    let mut count = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        match conn.read(&mut count[got..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    u64::from_le_bytes(count) == bytes
}

async fn connect(ip: Ipv4, port: u16) -> Option<TcpStream> {
    let give_up = Instant::now().saturating_add(Duration::from_secs(10));
    loop {
        match TcpStream::connect(ip, port).await {
            Ok(c) => return Some(c),
            Err(_) if Instant::now() < give_up => sleep(Duration::from_millis(100)).await,
            Err(_) => return None,
        }
    }
}

/// One run: prints `{"bench":"bulk",...}`.
pub async fn run(ip: Ipv4, port: u16, connections: usize, total: u64, chunk: usize) {
    let conns = join_all((0..connections).map(|_| spawn(connect(ip, port))).collect()).await;
    let mut errors = conns.iter().filter(|c| c.is_none()).count() as u64;
    let each = total / connections as u64;
    let done = Rc::new(Cell::new(0u64));
    let start = Instant::now();
    let tasks: alloc::vec::Vec<_> = conns.into_iter().flatten().map(|c| spawn(stream(c, each, chunk, done.clone()))).collect();
    let running = tasks.len();
    // Wait for all of them, giving up on a run that stops moving for 20 s.
    let finished = Rc::new(Cell::new(0usize));
    let ok = Rc::new(Cell::new(0usize));
    for t in tasks {
        let (finished, ok) = (finished.clone(), ok.clone());
        spawn(async move {
            if t.await {
                ok.set(ok.get() + 1);
            }
            finished.set(finished.get() + 1);
        });
    }
    let (mut last, mut moved_at) = (0u64, Instant::now());
    while finished.get() < running {
        sleep(Duration::from_millis(5)).await;
        if done.get() != last {
            (last, moved_at) = (done.get(), Instant::now());
        } else if moved_at.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    let secs = start.elapsed().as_nanos() as f64 / 1e9;
    errors += (running - ok.get()) as u64;
    let bytes = each * ok.get() as u64;
    let per_sec = if secs > 0.0 { bytes as f64 / secs } else { 0.0 };
    println!(
        "{{\"bench\":\"bulk\",\"connections\":{connections},\"bytes\":{bytes},\"bytes_per_connection\":{each},\"chunk_bytes\":{chunk},\
         \"duration_ms\":{:.1},\"mbytes_per_sec\":{:.2},\"gbits_per_sec\":{:.4},\"errors\":{errors}}}",
        secs * 1e3,
        per_sec / 1e6,
        per_sec * 8.0 / 1e9
    );
}
