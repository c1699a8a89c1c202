//! A TCP proxy that holds every chunk for a fixed delay before passing it on, to measure the
//! server with its database "on another host" on a machine where both run side by side.
//!
//! `cargo run --release -p tessera-tests --bin delay_proxy -- 250` listens on 127.0.0.1:5433,
//! forwards to 127.0.0.1:5432 and delays each direction by 250 µs; point `DATABASE_URL` at port
//! 5433. Each direction of each connection is a thread of its own that sleeps (`nanosleep`, so
//! the delay is not rounded to a timer tick) before it writes, so connections never wait for
//! one another. Arguments: `DELAY_MICROSECONDS [LISTEN_PORT] [TARGET_PORT]`. For benchmarks
//! only.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                std::thread::sleep(delay);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let number = |i: usize, default: u64| {
        args.get(i)
            .map(|a| a.parse::<u64>().expect("a whole number"))
            .unwrap_or(default)
    };
    let delay = Duration::from_micros(number(1, 250));
    let listen = number(2, 5433);
    let target = number(3, 5432);
    let listener = TcpListener::bind(("127.0.0.1", listen as u16))?;
    eprintln!("delaying 127.0.0.1:{listen} -> 127.0.0.1:{target} by {delay:?} each way");
    for client in listener.incoming() {
        let client = client?;
        let upstream = TcpStream::connect(("127.0.0.1", target as u16))?;
        client.set_nodelay(true)?;
        upstream.set_nodelay(true)?;
        let (c2, u2) = (client.try_clone()?, upstream.try_clone()?);
        std::thread::spawn(move || pipe(client, upstream, delay));
        std::thread::spawn(move || pipe(u2, c2, delay));
    }
    Ok(())
}
