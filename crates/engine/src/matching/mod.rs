//! Pure matchers (domain, IP, path, header, port) and the compiled [`RouteTable`]. No I/O.

mod domain;
mod header;
mod index;
mod ip;
mod path;
mod ports;
mod table;

pub use domain::{normalize_host, DomainPattern};
pub use header::{HeaderMatcher, HeaderValuePattern};
pub use ip::{is_authorized, normalize_ip, IpPattern};
pub use path::{PathMatch, PathPattern};
pub use ports::{ports_contain, PortRange};
pub use table::{CompiledRoute, Early, HttpView, MatchInput, RouteTable, SelectedTarget};
