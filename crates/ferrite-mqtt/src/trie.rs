//! The subscription tree: topic filters stored level by level, so matching a topic costs
//! the topic's depth, not the number of subscriptions.

use std::collections::HashMap;

use ferrite_core::{TopicFilter, TopicName};

/// Identifies one subscriber (a client session or an internal consumer) in the router.
pub type SubscriberId = u64;

/// One level. Most nodes are leaves (a device's own topic), so what a leaf does not use is
/// kept out of line: the children map is boxed and absent until the first child, and a
/// level's name is a boxed `str` — a leaf is 64 bytes plus its key, in its parent's table.
#[derive(Debug)]
struct Node<V> {
    // Boxed on purpose: the map's own header (48 bytes) would otherwise sit in every leaf.
    #[allow(clippy::box_collection)]
    children: Option<Box<HashMap<Box<str>, Node<V>>>>,
    /// Subtree of the `+` level.
    plus: Option<Box<Node<V>>>,
    /// Subscriptions whose filter ends here with `#`.
    hash: Vec<(SubscriberId, V)>,
    /// Subscriptions whose filter ends exactly here.
    exact: Vec<(SubscriberId, V)>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Self {
            children: None,
            plus: None,
            hash: Vec::new(),
            exact: Vec::new(),
        }
    }
}

impl<V> Node<V> {
    fn child(&self, level: &str) -> Option<&Node<V>> {
        self.children.as_ref()?.get(level)
    }

    fn is_empty(&self) -> bool {
        self.children.is_none()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.exact.is_empty()
    }
}

/// Filters → subscribers, with a value (the subscription options) per subscription.
#[derive(Debug)]
pub struct SubscriptionTree<V> {
    root: Node<V>,
    len: usize,
}

impl<V> Default for SubscriptionTree<V> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V: Clone> SubscriptionTree<V> {
    /// Add or replace `id`'s subscription to `filter`. Returns true if it replaced one.
    pub fn insert(&mut self, filter: &TopicFilter, id: SubscriberId, value: V) -> bool {
        let mut node = &mut self.root;
        let mut is_hash = false;
        for level in filter.levels() {
            match level {
                "#" => is_hash = true,
                "+" => node = node.plus.get_or_insert_with(Box::default),
                l => {
                    node = node
                        .children
                        .get_or_insert_with(Box::default)
                        .entry(l.into())
                        .or_default();
                }
            }
        }
        let list = if is_hash {
            &mut node.hash
        } else {
            &mut node.exact
        };
        if let Some(slot) = list.iter_mut().find(|(i, _)| *i == id) {
            slot.1 = value;
            true
        } else {
            // Most filters have one subscriber: room for exactly one, not the four a first
            // push reserves (every idle device's subscription pays for it).
            if list.capacity() == 0 {
                list.reserve_exact(1);
            }
            list.push((id, value));
            self.len += 1;
            false
        }
    }

    /// Remove `id`'s subscription to `filter`. Returns true if there was one.
    pub fn remove(&mut self, filter: &TopicFilter, id: SubscriberId) -> bool {
        let levels: Vec<&str> = filter.levels().collect();
        let removed = remove_at(&mut self.root, &levels, id);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Call `f` for every subscription matching `topic` (a subscriber may appear more than
    /// once if several of its filters match).
    pub fn for_each_match(&self, topic: &TopicName, mut f: impl FnMut(SubscriberId, &V)) {
        let levels: Vec<&str> = topic.levels().collect();
        if topic.is_system() {
            // Root wildcards do not match `$` topics: only descend the literal first level.
            if let Some(child) = self.root.child(levels[0]) {
                match_at(child, &levels[1..], &mut f);
            }
        } else {
            match_at(&self.root, &levels, &mut f);
        }
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn match_at<V>(node: &Node<V>, levels: &[&str], f: &mut impl FnMut(SubscriberId, &V)) {
    // `a/#` matches `a` too: the hash list of this node applies whatever remains.
    for (id, v) in &node.hash {
        f(*id, v);
    }
    let Some((first, rest)) = levels.split_first() else {
        for (id, v) in &node.exact {
            f(*id, v);
        }
        return;
    };
    if let Some(child) = node.child(first) {
        match_at(child, rest, f);
    }
    if let Some(plus) = &node.plus {
        match_at(plus, rest, f);
    }
}

fn remove_at<V>(node: &mut Node<V>, levels: &[&str], id: SubscriberId) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        let before = node.exact.len();
        node.exact.retain(|(i, _)| *i != id);
        return node.exact.len() != before;
    };
    match *first {
        "#" => {
            let before = node.hash.len();
            node.hash.retain(|(i, _)| *i != id);
            node.hash.len() != before
        }
        "+" => {
            let Some(plus) = node.plus.as_mut() else {
                return false;
            };
            let removed = remove_at(plus, rest, id);
            if plus.is_empty() {
                node.plus = None;
            }
            removed
        }
        l => {
            let Some(children) = node.children.as_mut() else {
                return false;
            };
            let Some(child) = children.get_mut(l) else {
                return false;
            };
            let removed = remove_at(child, rest, id);
            if child.is_empty() {
                children.remove(l);
                if children.is_empty() {
                    node.children = None;
                }
            }
            removed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::new(s).expect("valid filter")
    }

    fn matches(tree: &SubscriptionTree<()>, topic: &str) -> Vec<SubscriberId> {
        let mut out = Vec::new();
        tree.for_each_match(&TopicName::new(topic).expect("valid topic"), |id, ()| {
            out.push(id)
        });
        out.sort_unstable();
        out
    }

    #[test]
    fn matches_agree_with_filter_matching() {
        let filters = [
            "a/b", "a/+", "a/#", "#", "+/b", "+/+/c", "$SYS/#", "a/b/c", "+",
        ];
        let topics = ["a/b", "a", "a/b/c", "x/b", "$SYS/x", "a/c/c", "q", "/b"];
        let mut tree = SubscriptionTree::default();
        for (i, fl) in filters.iter().enumerate() {
            tree.insert(&f(fl), i as u64, ());
        }
        for t in topics {
            let tn = TopicName::new(t).expect("valid");
            let want: Vec<u64> = filters
                .iter()
                .enumerate()
                .filter(|(_, fl)| f(fl).matches(&tn))
                .map(|(i, _)| i as u64)
                .collect();
            assert_eq!(matches(&tree, t), want, "topic {t}");
        }
    }

    #[test]
    fn remove_prunes_and_reports() {
        let mut tree = SubscriptionTree::default();
        tree.insert(&f("a/+/c"), 1, ());
        tree.insert(&f("a/#"), 2, ());
        assert!(
            tree.insert(&f("a/#"), 2, ()),
            "re-subscribing replaces the subscription, it adds none"
        );
        assert_eq!(tree.len(), 2);
        assert!(tree.remove(&f("a/+/c"), 1));
        assert!(!tree.remove(&f("a/+/c"), 1));
        assert_eq!(matches(&tree, "a/b/c"), vec![2]);
        assert!(tree.remove(&f("a/#"), 2));
        assert!(tree.is_empty());
        assert!(tree.root.is_empty());
    }
}
