//! Error text fit for logs and for the messages jobs end with: a reqwest
//! error with the causes its `Display` leaves out, bodies cut to an excerpt,
//! and URLs without their query (a signed URL's signature is a credential).

use url::Url;

/// How much of a server's text goes into an error message, in characters.
pub const BODY_EXCERPT_CHARS: usize = 500;

/// `text`, trimmed and cut to [`BODY_EXCERPT_CHARS`] characters (an
/// ellipsis marks the cut).
pub fn excerpt(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(BODY_EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A response body as text for an error message: its [`excerpt`], or
/// `(empty body)`.
pub fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.trim().is_empty() {
        return "(empty body)".to_owned();
    }
    excerpt(&text)
}

/// A reqwest error with its chain of causes: reqwest's own `Display` hides
/// why ("error sending request"), the sources say it (connection refused,
/// a DNS failure, ...). Timeouts are marked `(timed out)`, and a URL with
/// a query is named without it.
pub fn describe_error(e: &reqwest::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    if e.is_timeout() {
        message.push_str(" (timed out)");
    }
    if let Some(url) = e.url().filter(|u| u.query().is_some()) {
        message = message.replace(url.as_str(), without_query(url).as_str());
    }
    message
}

/// The URL without its query: signed result URLs carry their signature
/// there, which has no place in logs or messages.
pub fn without_query(url: &Url) -> Url {
    let mut url = url.clone();
    url.set_query(None);
    url
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn excerpts_are_cut_on_a_char_boundary() {
        let long = "é".repeat(2 * BODY_EXCERPT_CHARS);
        let cut = body_excerpt(long.as_bytes());
        assert_eq!(cut.chars().count(), BODY_EXCERPT_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(body_excerpt(b"  "), "(empty body)");
        assert_eq!(excerpt("  "), "");
        assert_eq!(excerpt(" short "), "short");
    }

    #[test]
    fn the_query_is_dropped() {
        let url = Url::parse("https://cdn.example/r.png?X-Signature=secret").unwrap();
        assert_eq!(without_query(&url).as_str(), "https://cdn.example/r.png");
    }

    #[tokio::test]
    async fn a_refused_connection_is_named_with_its_cause_and_no_query() {
        // A port that was just free: nothing listens there.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}/r.png?sig=secret");
        let e = reqwest::get(&url).await.unwrap_err();
        let text = describe_error(&e);
        // The cause reqwest's Display leaves out.
        assert!(text.len() > e.to_string().len(), "{text}");
        assert!(text.to_ascii_lowercase().contains("refused"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert!(!text.contains("timed out"), "{text}");
    }

    #[tokio::test]
    async fn a_timeout_is_marked() {
        // Accepts the connection and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(socket);
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let e = client
            .get(format!("http://{addr}/slow"))
            .send()
            .await
            .unwrap_err();
        assert!(e.is_timeout());
        assert!(describe_error(&e).ends_with(" (timed out)"), "{e:?}");
        hold.abort();
    }
}
