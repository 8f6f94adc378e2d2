//! Answers that come later: a handler that must wait a long time (a check-in's long poll)
//! returns a placeholder response carrying the rest of its work as a future ([`Later`]), and the
//! HTTP loop awaits that future after the router's layers have finished with the placeholder.
//!
//! Why: every layer a request passes through (the route's rate limit, the API version check,
//! `nosniff`, the router itself) keeps a boxed future alive for as long as the handler runs.
//! For a parked check-in that is the whole long poll, 5 minutes, times every agent of the
//! fleet. heaptrack counted those layers at 0.2–0.6 KiB each per parked agent, a third of its
//! live heap (docs/benchmarks.md). Handed out this way, a parked agent holds only the wait:
//! after a storm of 10 000 plain agents, 8.6–8.8 KiB of resident memory per parked agent
//! instead of 12.5, and 18.5 instead of 22.6 over TLS (glibc keeps less around fewer blocks).
//!
//! The layers see the placeholder (`200`, empty) and add their headers to it; the final answer
//! gets each header it lacks from it, so a header a layer adds still reaches the client. What a
//! layer must keep for the whole wait, it moves into the future ([`Later::hold`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::response::Response;

type Answer = Pin<Box<dyn Future<Output = Response> + Send>>;

/// In a response's extensions: the response is a placeholder, and this is its real answer.
/// (Extensions must be `Clone + Sync`, hence the shared slot; it is taken once.)
#[derive(Clone)]
pub(crate) struct Later(Arc<Mutex<Option<Answer>>>);

impl Later {
    /// A placeholder response whose answer is `answer`.
    pub(crate) fn response(answer: impl Future<Output = Response> + Send + 'static) -> Response {
        let mut placeholder = Response::new(Body::empty());
        placeholder.extensions_mut().insert(Later(Arc::new(Mutex::new(Some(Box::pin(answer))))));
        placeholder
    }

    fn take(response: &mut Response) -> Option<Answer> {
        response.extensions_mut().remove::<Later>()?.0.lock().expect("later lock").take()
    }

    /// `response` with `keep` dropped only once its answer is complete, when it has one to
    /// come; otherwise `keep` goes now, with the layer that held it. (A concurrency permit
    /// must count the whole long poll, not its placeholder.)
    pub(crate) fn hold<T: Send + 'static>(mut response: Response, keep: T) -> Response {
        if let Some(answer) = Self::take(&mut response) {
            let slot = Box::pin(async move {
                let answer = answer.await;
                drop(keep);
                answer
            });
            response.extensions_mut().insert(Later(Arc::new(Mutex::new(Some(slot)))));
        }
        response
    }

    /// The final response for what the router returned: `response` itself, or, for a
    /// placeholder, its answer with the headers the layers put on the placeholder, except
    /// those that describe the placeholder's own empty body (`Content-Length: 0`, which the
    /// router adds, and any other `Content-*`).
    pub(crate) async fn finish(mut response: Response) -> Response {
        let Some(answer) = Self::take(&mut response) else { return response };
        let mut answer = answer.await;
        let headers = answer.headers_mut();
        let mut name = None;
        for (n, value) in std::mem::take(response.headers_mut()) {
            // `into_iter` names a header once, before the first of its values.
            if n.is_some() {
                name = n;
            }
            if let Some(name) = &name
                && !name.as_str().starts_with("content-")
                && !headers.contains_key(name)
            {
                headers.insert(name.clone(), value);
            }
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[tokio::test]
    async fn a_placeholder_gives_its_answer_the_headers_it_lacks_and_holds_what_it_is_given() {
        use tokio::sync::oneshot::error::TryRecvError;
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let mut placeholder = Later::response(async {
            let mut answer = Response::new(Body::from("late"));
            *answer.status_mut() = StatusCode::UNAUTHORIZED;
            answer.headers_mut().insert("elastic-api-version", "from-the-answer".parse().unwrap());
            answer
        });
        placeholder.headers_mut().insert("x-content-type-options", "nosniff".parse().unwrap());
        placeholder.headers_mut().insert("elastic-api-version", "from-a-layer".parse().unwrap());
        placeholder.headers_mut().insert("content-length", "0".parse().unwrap());
        // What a layer holds goes with the answer, not with the placeholder.
        let placeholder = Later::hold(placeholder, tx);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)), "held while the answer waits");
        let answer = Later::finish(placeholder).await;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(answer.headers()["x-content-type-options"], "nosniff");
        assert_eq!(answer.headers()["elastic-api-version"], "from-the-answer");
        assert!(!answer.headers().contains_key("content-length"), "the placeholder's own");
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Closed)), "dropped with the answer");
    }

    #[tokio::test]
    async fn an_ordinary_response_is_itself_and_drops_what_it_would_hold() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let response = Later::hold(Response::new(Body::from("now")), tx);
        assert!(rx.await.is_err(), "nothing to wait for: dropped at once");
        let response = Later::finish(response).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
}
