//! A few named threads of its own for blocking work that allocates a lot at
//! once (Argon2, opening the embedded state file). A thread's allocator
//! keeps what it once held, so running such work on tokio's large blocking
//! pool would let every one of its threads keep a copy.

use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

pub struct Workers {
    /// `None` if no thread could be started.
    queue: Option<Mutex<Sender<Job>>>,
}

impl Workers {
    pub fn new(name: &str, threads: usize) -> Workers {
        let (sender, receiver) = channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let mut started = 0;
        for n in 0..threads {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || {
                    loop {
                        let next = receiver.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match next {
                            Ok(job) => job(),
                            Err(_) => break,
                        }
                    }
                });
            started += usize::from(spawned.is_ok());
        }
        Workers {
            queue: (started > 0).then(|| Mutex::new(sender)),
        }
    }

    /// Runs `job` on one of the threads; `None` if they are gone or the job
    /// panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(job());
        });
        self.queue
            .as_ref()?
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .ok()?;
        answer.await.ok()
    }
}
