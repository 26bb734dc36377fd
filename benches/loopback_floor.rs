//! What one event to N loopback streams costs the kernel alone on this
//! machine: the floor under the `sse` bench's fan-out figures (not a test:
//! run it by hand).
//!
//!     cargo bench --bench loopback_floor              # 9,900 streams
//!     FLOOR_STREAMS=5000 FLOOR_WRITERS=1 cargo bench --bench loopback_floor
//!
//! It opens FLOOR_STREAMS (9,900: the bench and its peer need a descriptor
//! each per stream, under the usual 20,000 limit) TCP connections to
//! itself on 127.0.0.1, reads the client ends as the `sse` bench's client
//! does (FLOOR_READERS epoll threads at nice 10), and for each of
//! FLOOR_ROUNDS events has FLOOR_WRITERS bare threads at nice 0 write one
//! SSE-sized chunk to every server end with one `write` each: no HTTP, no
//! async runtime, no locks. Since loopback delivery happens inside the
//! sender's `write`, the moment a write returns is the moment the bytes
//! reached the client socket; the spread of those moments (p50, p99, max
//! after the first) is the best any server could do for one event here.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sets the calling thread's niceness.
fn set_nice(nice: i32) {
    // SAFETY: a plain libc call; `0` means the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        eprintln!(
            "warning: setpriority({nice}): {}",
            std::io::Error::last_os_error()
        );
    }
}

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills a zeroed struct.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// Reads every client socket in `fds` as data comes (edge-triggered epoll).
fn reader(fds: Vec<i32>) {
    set_nice(10);
    // SAFETY: epoll and recv on descriptors the bench keeps open for its
    // whole run, into buffers of their own length.
    unsafe {
        let epoll = libc::epoll_create1(0);
        for &fd in &fds {
            libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
            let mut event = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLET) as u32,
                u64: fd as u64,
            };
            libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event);
        }
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut buf = [0u8; 4096];
        loop {
            let ready = libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, -1);
            for event in &events[..ready.max(0) as usize] {
                let fd = event.u64 as i32;
                while libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) > 0 {}
            }
        }
    }
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit.
fn raise_nofile() {
    // SAFETY: plain libc calls on a stack value.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn main() {
    raise_nofile();
    let streams = env_or("FLOOR_STREAMS", 9_900);
    let writers = env_or("FLOOR_WRITERS", 2).max(1);
    let readers = env_or("FLOOR_READERS", 2).max(1);
    let rounds = env_or("FLOOR_ROUNDS", 5);

    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let addr = listener.local_addr().unwrap();
    let mut clients = Vec::with_capacity(streams);
    let mut servers = Vec::with_capacity(streams);
    for _ in 0..streams {
        let client = TcpStream::connect(addr).expect("connecting (raise RLIMIT_NOFILE?)");
        let (server, _) = listener.accept().expect("accepting");
        client.set_nodelay(true).unwrap();
        server.set_nodelay(true).unwrap();
        clients.push(client);
        servers.push(server);
    }
    for part in 0..readers {
        let fds = clients
            .iter()
            .skip(part)
            .step_by(readers)
            .map(|c| c.as_raw_fd())
            .collect();
        std::thread::spawn(move || reader(fds));
    }
    // An SSE event as the `sse` bench sends it, framed as a chunk.
    let text = "id: 123\nevent: job.queued\ndata: {\"bench_seq\":1,\"job_id\":\"01939c5e-8a2b-7c3d-9e4f-0123456789ab\"}\n\n";
    let chunk = Arc::new(format!("{:x}\r\n{text}\r\n", text.len()).into_bytes());
    let servers = Arc::new(servers);
    println!(
        "loopback floor: {streams} streams, {writers} writer thread(s) at nice 0, {readers} reader thread(s) at nice 10, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for round in 1..=rounds {
        std::thread::sleep(Duration::from_millis(500));
        let start = Arc::new(Barrier::new(writers));
        let handles: Vec<_> = (0..writers)
            .map(|part| {
                let (servers, start, chunk) = (servers.clone(), start.clone(), chunk.clone());
                std::thread::spawn(move || {
                    set_nice(0);
                    start.wait();
                    let cpu = thread_cpu();
                    let mut done = Vec::with_capacity(servers.len() / writers + 1);
                    for server in servers.iter().skip(part).step_by(writers) {
                        (&*server).write_all(&chunk).expect("writing to a stream");
                        done.push(Instant::now());
                    }
                    (done, thread_cpu() - cpu)
                })
            })
            .collect();
        let mut done = Vec::with_capacity(streams);
        let mut cpu = Duration::ZERO;
        for handle in handles {
            let (times, used) = handle.join().unwrap();
            done.extend(times);
            cpu += used;
        }
        done.sort();
        let first = done[0];
        let at = |q: f64| done[((done.len() - 1) as f64 * q).round() as usize] - first;
        println!(
            "event {round}: spread p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; writers' CPU {:.0} ms ({:.1} µs per write)",
            at(0.5).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3,
            at(1.0).as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e6 / streams as f64
        );
    }
}
