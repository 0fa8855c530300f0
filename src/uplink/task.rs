//! A publishing task that is told to stop (so it can say goodbye: offline status, NDEATH) and
//! is waited for, boundedly; dropped without that, it is aborted like a crash.

use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct StoppableTask {
    /// Named in the log when it does not stop in time.
    what: &'static str,
    task: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
}

impl StoppableTask {
    /// Spawns `run(stop)`; the task should end soon after `stop` fires.
    pub fn spawn<F, Fut>(what: &'static str, run: F) -> StoppableTask
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, rx) = oneshot::channel();
        StoppableTask {
            what,
            task: Some(tokio::spawn(run(rx))),
            stop: Some(stop),
        }
    }

    /// Signals the stop and waits at most 5 s for the task to end.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                tracing::warn!(task = self.what, "did not stop within 5 s");
            }
        }
    }
}

impl Drop for StoppableTask {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
