//! Response bodies rendered once per view: the same question asked again
//! before the next slide is answered with the same bytes, not rendered anew.
//! [`Renders`] holds the caches of the newest view; answers about other
//! ranges carry over to the next view while its kept panes are the same.

use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;

use crate::snapshot::Snapshot;

/// Response bodies rendered from one snapshot: the same question asked again
/// before the next slide is answered with the same bytes, not rendered anew.
#[derive(Debug)]
pub struct RenderCache<K = usize>(Mutex<Vec<(K, Bytes)>>);

impl<K> Default for RenderCache<K> {
    fn default() -> Self {
        RenderCache(Mutex::new(Vec::new()))
    }
}

impl<K: PartialEq> RenderCache<K> {
    /// Distinct questions kept per snapshot (the oldest answer goes first).
    const ENTRIES: usize = 8;

    /// The cached answer to `key`, if any.
    pub fn get(&self, key: &K) -> Option<Bytes> {
        self.lock()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, b)| b.clone())
    }

    /// Keeps `body` as the answer to `key`.
    pub fn put(&self, key: K, body: Bytes) {
        let mut cache = self.lock();
        if !cache.iter().any(|(k, _)| *k == key) {
            if cache.len() == Self::ENTRIES {
                cache.remove(0);
            }
            cache.push((key, body));
        }
    }

    pub fn get_or_render(&self, key: K, render: impl FnOnce() -> Bytes) -> Bytes {
        if let Some(body) = self.get(&key) {
            return body;
        }
        // Rendered outside the lock: concurrent first askers may both render.
        let body = render();
        self.put(key, body.clone());
        body
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(K, Bytes)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What was rendered from one view.
#[derive(Debug, Default)]
pub struct Rendered {
    /// `/api/v1/top` bodies, by `n`.
    pub top: RenderCache,
    /// `/api/v1/events` event data, by `n`: every stream asking the same
    /// `n` sends the same bytes.
    pub events: RenderCache,
    /// Answers to questions about other ranges or networks, by question.
    pub adhoc: Arc<RenderCache<String>>,
}

/// The caches of the newest view asked about.
#[derive(Debug, Default)]
pub struct Renders(Mutex<Option<Current>>);

#[derive(Debug)]
struct Current {
    seq: u64,
    kept_seq: u64,
    rendered: Arc<Rendered>,
}

impl Renders {
    /// The caches of `view`. A view older than the newest one asked about
    /// gets caches of its own, kept by nobody (its answers are stale soon).
    pub fn of(&self, view: &Snapshot) -> Arc<Rendered> {
        let mut current = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match current.as_ref() {
            Some(c) if c.seq == view.seq => return c.rendered.clone(),
            Some(c) if c.seq > view.seq => return Arc::default(),
            _ => {}
        }
        let adhoc = match current.as_ref() {
            Some(c) if c.kept_seq == view.kept_seq => c.rendered.adhoc.clone(),
            _ => Arc::default(),
        };
        let rendered = Arc::new(Rendered {
            adhoc,
            ..Rendered::default()
        });
        *current = Some(Current {
            seq: view.seq,
            kept_seq: view.kept_seq,
            rendered: rendered.clone(),
        });
        rendered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_rendered_answer_is_reused_until_eight_newer_ones_push_it_out() {
        let cache = RenderCache::default();
        let renders = std::cell::Cell::new(0);
        let render = |key: usize| {
            renders.set(renders.get() + 1);
            Bytes::from(format!("body {key}"))
        };
        assert_eq!(cache.get_or_render(100, || render(100)), "body 100");
        assert_eq!(cache.get_or_render(100, || render(100)), "body 100");
        assert_eq!(renders.get(), 1, "the second ask is served from the cache");
        for key in 1..=RenderCache::<usize>::ENTRIES {
            assert_eq!(
                cache.get_or_render(key, || render(key)),
                format!("body {key}")
            );
        }
        assert_eq!(renders.get(), 1 + RenderCache::<usize>::ENTRIES);
        cache.get_or_render(100, || render(100));
        assert_eq!(
            renders.get(),
            2 + RenderCache::<usize>::ENTRIES,
            "evicted, rendered again"
        );
    }

    #[test]
    fn answers_about_the_same_kept_panes_carry_over_to_the_next_view() {
        let renders = Renders::default();
        let view = |seq, kept_seq| Snapshot {
            seq,
            kept_seq,
            ..Snapshot::empty(Duration::from_secs(2), Duration::from_secs(1))
        };
        let (first, next, moved) = (view(10, 1), view(11, 1), view(12, 2));
        let rendered = renders.of(&first);
        rendered.top.put(5, "top".into());
        rendered.adhoc.put("q".into(), "answer".into());
        assert!(
            Arc::ptr_eq(&renders.of(&first), &rendered),
            "one view, one cache"
        );
        let again = renders.of(&next);
        assert_eq!(again.top.get(&5), None, "a new view renders its top anew");
        assert_eq!(again.adhoc.get(&"q".into()), Some("answer".into()));
        assert_eq!(
            renders.of(&moved).adhoc.get(&"q".into()),
            None,
            "new panes, new answers"
        );
        let stale = renders.of(&first);
        assert!(
            stale.adhoc.get(&"q".into()).is_none(),
            "an older view caches alone"
        );
        assert_eq!(renders.of(&moved).adhoc.get(&"q".into()), None);
    }
}
