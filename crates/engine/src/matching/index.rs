//! The routes of one listening port, with a domain index, so that finding the route of a
//! connection or request does not scan every route of a port that holds thousands (one route
//! per customer domain is common).
//!
//! Routes whose every domain pattern is an exact name or a `*.suffix` are listed under those
//! keys; the others (no domains, `*`, other globs) are "generic" and tried for every host. A
//! lookup merges, in priority order, the lists of the host's name, of each of its suffixes at a
//! label boundary, and the generic list; the caller's full match decides among them. The lists
//! only narrow the candidates: every route that can match a host is in one of its lists.

use super::domain::IndexKey;
use super::normalize_host;
use super::CompiledRoute;
use std::collections::HashMap;
use std::sync::Arc;

/// Below this many routes a port is scanned (cheaper than hashing).
const INDEX_FROM: usize = 16;
/// Lists merged at most per lookup (a host with more labels falls back to a scan).
const MAX_LISTS: usize = 16;

#[derive(Debug, Default)]
pub struct PortRoutes {
    /// The port's routes (indices into the table), in priority order.
    pub all: Vec<usize>,
    index: Option<DomainIndex>,
    /// Some route here terminates or passes TLS through.
    pub has_tls: bool,
    /// Some route here serves plain HTTP and looks at requests.
    pub plain_http: bool,
    /// Every route here is decided without the connection's bytes and relays them untouched
    /// (no domains or other inspection, no TLS termination, no socket handler).
    pub blind_relay: bool,
}

#[derive(Debug, Default)]
struct DomainIndex {
    exact: HashMap<Box<str>, Vec<usize>>,
    /// By suffix with its leading dot (`.example.com` for `*.example.com`).
    suffix: HashMap<Box<str>, Vec<usize>>,
    generic: Vec<usize>,
}

impl PortRoutes {
    pub fn build(all: Vec<usize>, routes: &[Arc<CompiledRoute>]) -> Self {
        let has_tls = all.iter().any(|&i| routes[i].tls_mode().is_some());
        let plain_http = all.iter().any(|&i| routes[i].serves_http(false) && routes[i].needs_data);
        let blind_relay = all.iter().all(|&i| !routes[i].needs_data && routes[i].socket_handler().is_none());
        let index = (all.len() >= INDEX_FROM).then(|| {
            let mut ix = DomainIndex::default();
            for &i in &all {
                let domains = &routes[i].route.domains;
                let keys: Option<Vec<IndexKey>> = domains.iter().map(|d| d.index_key()).collect();
                match keys {
                    Some(keys) if !keys.is_empty() => {
                        for k in keys {
                            let (map, key) = match k {
                                IndexKey::Exact(e) => (&mut ix.exact, e),
                                IndexKey::Suffix(s) => (&mut ix.suffix, s),
                            };
                            let list = map.entry(key.into()).or_default();
                            // A route naming a key twice is listed once (lists stay sorted).
                            if list.last() != Some(&i) {
                                list.push(i);
                            }
                        }
                    }
                    _ => ix.generic.push(i),
                }
            }
            ix
        });
        PortRoutes { all, index, has_tls, plain_http, blind_relay }
    }

    /// The first route (in priority order) among the candidates for `domain` that `accept`s.
    pub fn first(&self, domain: Option<&str>, mut accept: impl FnMut(usize) -> bool) -> Option<usize> {
        let (Some(ix), Some(domain)) = (&self.index, domain) else {
            // Without a domain only routes without domains can match: those are generic.
            return match &self.index {
                Some(ix) => ix.generic.iter().copied().find(|&i| accept(i)),
                None => self.all.iter().copied().find(|&i| accept(i)),
            };
        };
        let host = normalize_host(domain);
        let mut lists: [&[usize]; MAX_LISTS] = [&[]; MAX_LISTS];
        let mut n = 0;
        let keyed = std::iter::once(ix.exact.get(&*host))
            .chain(host.match_indices('.').map(|(at, _)| ix.suffix.get(&host[at..])))
            .flatten()
            .chain(std::iter::once(&ix.generic));
        for list in keyed.filter(|l| !l.is_empty()) {
            if n == MAX_LISTS {
                return self.all.iter().copied().find(|&i| accept(i));
            }
            lists[n] = list.as_slice();
            n += 1;
        }
        let lists = &mut lists[..n];
        // Merge by lowest index (= highest priority; each list is sorted), each route once.
        loop {
            let i = lists.iter().filter_map(|l| l.first().copied()).min()?;
            for l in lists.iter_mut() {
                if l.first() == Some(&i) {
                    *l = &l[1..];
                }
            }
            if accept(i) {
                return Some(i);
            }
        }
    }
}
