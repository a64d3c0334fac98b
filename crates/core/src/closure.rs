//! Closures and orders over the graph of references between store paths.
//!
//! Every store path records the paths it refers to. The *closure* of a path
//! is everything it needs at run time: itself and, transitively, what it
//! refers to. Copying, garbage collection, deployment and
//! `why-depends` all walk this graph; a system's graph has tens of
//! thousands of paths, so [`ReferenceGraph`] is built once, numbers its
//! paths, and then works on numbers only (a compressed adjacency table from
//! `petgraph`, in both directions).
//!
//! Paths are numbered in [`StorePath`] order, so every result is
//! deterministic whatever order the graph was built from: ties are broken
//! by path order.
//!
//! ```
//! use bigtop_core::closure::ReferenceGraph;
//! use bigtop_core::StoreDir;
//!
//! let dir = StoreDir::default();
//! let path = |base: &str| dir.parse_path(&format!("/bigtop/store/{base}"));
//! let app = path("00bgd045z0d4icpbc2yyz4gx48ak44la-app")?;
//! let lib = path("11bgd045z0d4icpbc2yyz4gx48ak44la-lib")?;
//! let libc = path("22bgd045z0d4icpbc2yyz4gx48ak44la-libc")?;
//!
//! let graph = ReferenceGraph::new([
//!     (app.clone(), vec![lib.clone(), libc.clone()]),
//!     (lib.clone(), vec![libc.clone()]),
//!     (libc.clone(), vec![libc.clone()]), // a self-reference
//! ])?;
//! assert_eq!(graph.closure([&lib])?.len(), 2);
//! assert_eq!(graph.topo_order()?, [libc.clone(), lib.clone(), app.clone()]);
//! assert_eq!(graph.why_depends(&app, &libc)?, Some(vec![app.clone(), libc.clone()]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};
use std::fmt;

use petgraph::csr::Csr;
use petgraph::visit::Dfs;
use petgraph::Directed;
use thiserror::Error;

use crate::store_path::StorePath;

/// Adjacency in one direction: node number → sorted node numbers.
type Adjacency = Csr<(), (), Directed, usize>;

/// The references between a set of store paths.
#[derive(Clone)]
pub struct ReferenceGraph {
    /// Every path, sorted; a path's position is its node number.
    paths: Vec<StorePath>,
    /// Node → the nodes it refers to (self-references included).
    references: Adjacency,
    /// Node → the nodes that refer to it (self-references included).
    referrers: Adjacency,
}

/// A path refers to a path that is not in the graph.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("path `{referrer}` refers to `{reference}`, which is not in the reference graph")]
pub struct MissingReferenceError {
    /// The path whose references were given.
    pub referrer: StorePath,
    /// The reference that is not a node (the first in path order).
    pub reference: StorePath,
}

/// Paths asked about that are not in the graph.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("not in the reference graph: {}", backticked(paths))]
pub struct UnknownPathsError {
    /// The unknown paths, sorted, without duplicates.
    pub paths: Vec<StorePath>,
}

/// Paths that refer to each other in a cycle, so that no order puts every
/// reference before its referrers.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("paths refer to each other in a cycle: {}", cycle_text(cycle))]
pub struct CycleError {
    /// One cycle: each path refers to the next, and the last to the first.
    /// It starts at its smallest path.
    pub cycle: Vec<StorePath>,
}

fn backticked(paths: &[StorePath]) -> String {
    paths
        .iter()
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn cycle_text(cycle: &[StorePath]) -> String {
    let mut text: Vec<String> = cycle.iter().map(|p| format!("`{p}`")).collect();
    if let Some(first) = text.first().cloned() {
        text.push(first);
    }
    text.join(" -> ")
}

impl fmt::Debug for ReferenceGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReferenceGraph")
            .field("paths", &self.paths.len())
            .field("references", &self.references.edge_count())
            .finish()
    }
}

impl ReferenceGraph {
    /// The graph of `nodes`, each a path and the paths it refers to.
    ///
    /// A path may refer to itself. A path given twice has the union of its
    /// references. A reference to a path that is not given as a node is an
    /// error; see [`ReferenceGraph::new_lenient`] to add such paths as
    /// leaves instead.
    pub fn new<I, R>(nodes: I) -> Result<Self, MissingReferenceError>
    where
        I: IntoIterator<Item = (StorePath, R)>,
        R: IntoIterator<Item = StorePath>,
    {
        Self::build(nodes, false)
    }

    /// Like [`ReferenceGraph::new`], but a referenced path that is not
    /// given as a node is added as a node without references (useful for a
    /// partial view of a store, such as one closure's narinfo files).
    pub fn new_lenient<I, R>(nodes: I) -> Self
    where
        I: IntoIterator<Item = (StorePath, R)>,
        R: IntoIterator<Item = StorePath>,
    {
        match Self::build(nodes, true) {
            Ok(graph) => graph,
            Err(_) => unreachable!("a lenient build adds missing references as nodes"),
        }
    }

    fn build<I, R>(nodes: I, lenient: bool) -> Result<Self, MissingReferenceError>
    where
        I: IntoIterator<Item = (StorePath, R)>,
        R: IntoIterator<Item = StorePath>,
    {
        let mut entries: Vec<(StorePath, Vec<StorePath>)> = nodes
            .into_iter()
            .map(|(path, refs)| (path, refs.into_iter().collect()))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));

        let mut paths: Vec<StorePath> = entries.iter().map(|(p, _)| p.clone()).collect();
        paths.dedup();
        if lenient {
            paths.extend(entries.iter().flat_map(|(_, refs)| refs.iter().cloned()));
            paths.sort_unstable();
            paths.dedup();
        }

        let index = |p: &StorePath| paths.binary_search(p).ok();
        let mut edges: Vec<(usize, usize)> = Vec::new();
        for (path, refs) in &mut entries {
            // Sorted so that the error names the first missing reference.
            refs.sort_unstable();
            let from = index(path).unwrap_or_else(|| unreachable!("every node is numbered"));
            for reference in refs.iter() {
                let to = index(reference).ok_or_else(|| MissingReferenceError {
                    referrer: path.clone(),
                    reference: reference.clone(),
                })?;
                edges.push((from, to));
            }
        }
        edges.sort_unstable();
        edges.dedup();
        let references = adjacency(paths.len(), &edges);
        let mut reversed: Vec<(usize, usize)> = edges.iter().map(|&(a, b)| (b, a)).collect();
        reversed.sort_unstable();
        let referrers = adjacency(paths.len(), &reversed);
        Ok(ReferenceGraph {
            paths,
            references,
            referrers,
        })
    }

    /// How many paths the graph holds.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether the graph holds no paths.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Whether `path` is in the graph.
    pub fn contains(&self, path: &StorePath) -> bool {
        self.node(path).is_some()
    }

    /// Every path, in path order.
    pub fn paths(&self) -> impl ExactSizeIterator<Item = &StorePath> {
        self.paths.iter()
    }

    /// The paths `path` refers to, in path order, or `None` if `path` is not
    /// in the graph.
    pub fn references(
        &self,
        path: &StorePath,
    ) -> Option<impl ExactSizeIterator<Item = &StorePath>> {
        let node = self.node(path)?;
        Some(
            self.references
                .neighbors_slice(node)
                .iter()
                .map(|&n| &self.paths[n]),
        )
    }

    /// The paths that refer to `path`, in path order, or `None` if `path` is
    /// not in the graph.
    pub fn referrers(&self, path: &StorePath) -> Option<impl ExactSizeIterator<Item = &StorePath>> {
        let node = self.node(path)?;
        Some(
            self.referrers
                .neighbors_slice(node)
                .iter()
                .map(|&n| &self.paths[n]),
        )
    }

    /// Everything `roots` need: the roots and, transitively, their
    /// references.
    pub fn closure<'a>(
        &self,
        roots: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<BTreeSet<StorePath>, UnknownPathsError> {
        let nodes = self.reach(&self.references, self.nodes(roots)?);
        Ok(self.to_paths(nodes))
    }

    /// Everything that needs `roots`: the roots and, transitively, the
    /// paths that refer to them (what garbage collection must keep if it
    /// keeps a root's referrers).
    pub fn reverse_closure<'a>(
        &self,
        roots: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<BTreeSet<StorePath>, UnknownPathsError> {
        let nodes = self.reach(&self.referrers, self.nodes(roots)?);
        Ok(self.to_paths(nodes))
    }

    /// The total of `size` over the closure of `roots`, each path counted
    /// once (saturating at `u64::MAX`).
    pub fn closure_size<'a>(
        &self,
        roots: impl IntoIterator<Item = &'a StorePath>,
        mut size: impl FnMut(&StorePath) -> u64,
    ) -> Result<u64, UnknownPathsError> {
        let nodes = self.reach(&self.references, self.nodes(roots)?);
        Ok(nodes
            .into_iter()
            .fold(0u64, |total, n| total.saturating_add(size(&self.paths[n]))))
    }

    /// Every path, each after all the paths it refers to: the order to
    /// copy or register them in. Among paths whose references are all
    /// placed, the smallest comes first, so the order is unique.
    ///
    /// Self-references are ignored; any other cycle is an error naming the
    /// paths in one cycle.
    pub fn topo_order(&self) -> Result<Vec<StorePath>, CycleError> {
        let n = self.len();
        // How many distinct references (other than itself) each node still
        // waits for.
        let mut waiting: Vec<usize> = (0..n)
            .map(|i| {
                self.references
                    .neighbors_slice(i)
                    .iter()
                    .filter(|&&r| r != i)
                    .count()
            })
            .collect();
        let mut ready: BinaryHeap<Reverse<usize>> =
            (0..n).filter(|&i| waiting[i] == 0).map(Reverse).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(Reverse(node)) = ready.pop() {
            order.push(node);
            for &referrer in self.referrers.neighbors_slice(node) {
                if referrer != node {
                    waiting[referrer] -= 1;
                    if waiting[referrer] == 0 {
                        ready.push(Reverse(referrer));
                    }
                }
            }
        }
        if order.len() < n {
            return Err(CycleError {
                cycle: self.find_cycle(&waiting),
            });
        }
        Ok(order.into_iter().map(|i| self.paths[i].clone()).collect())
    }

    /// A cycle among the nodes still waiting after a topological sort.
    ///
    /// Each such node waits for at least one other such node, so walking
    /// from one to its smallest waiting reference must come back to a node
    /// already walked: the walk from there on is a cycle.
    fn find_cycle(&self, waiting: &[usize]) -> Vec<StorePath> {
        const UNSEEN: usize = usize::MAX;
        let mut position = vec![UNSEEN; self.len()];
        let mut walk = Vec::new();
        let Some(mut node) = (0..self.len()).find(|&i| waiting[i] > 0) else {
            return Vec::new();
        };
        while position[node] == UNSEEN {
            position[node] = walk.len();
            walk.push(node);
            let Some(&next) = self
                .references
                .neighbors_slice(node)
                .iter()
                .find(|&&r| r != node && waiting[r] > 0)
            else {
                // Unreachable by the argument above; return the walk rather
                // than panic.
                break;
            };
            node = next;
        }
        let mut cycle = walk.split_off(position[node].min(walk.len()));
        if let Some(smallest) = cycle
            .iter()
            .enumerate()
            .min_by_key(|(_, &n)| n)
            .map(|(i, _)| i)
        {
            cycle.rotate_left(smallest);
        }
        cycle.into_iter().map(|i| self.paths[i].clone()).collect()
    }

    /// A shortest chain of references from `from` to `to`, both included
    /// (`[from]` when they are the same path), or `None` if `from` does not
    /// depend on `to`.
    ///
    /// Among chains of the same length, the one whose paths are smallest,
    /// compared from `from` onwards, is returned, so the answer is unique.
    pub fn why_depends(
        &self,
        from: &StorePath,
        to: &StorePath,
    ) -> Result<Option<Vec<StorePath>>, UnknownPathsError> {
        let [start, goal] = self.nodes_exact([from, to])?;
        Ok(self.chain_to(&[start], |node| node == goal))
    }

    /// A shortest chain of references from one of `roots` to a path that
    /// `hit` accepts, both included, or `None` if the roots need no such
    /// path: [`why_depends`](Self::why_depends) for a path known by a
    /// property (its name) rather than by itself.
    ///
    /// Roots are searched from in the order given, and among chains of
    /// the same length from one root, the one whose paths are smallest is
    /// returned, so the answer is unique.
    pub fn shortest_chain<'a>(
        &self,
        roots: impl IntoIterator<Item = &'a StorePath>,
        mut hit: impl FnMut(&StorePath) -> bool,
    ) -> Result<Option<Vec<StorePath>>, UnknownPathsError> {
        let starts = self.nodes(roots)?;
        Ok(self.chain_to(&starts, |node| hit(&self.paths[node])))
    }

    /// The breadth-first search behind both: from `starts` in order,
    /// references in path order, so the first time a node is reached is
    /// by the smallest shortest chain; `hit` is asked of each node as it
    /// is visited.
    fn chain_to(
        &self,
        starts: &[usize],
        mut hit: impl FnMut(usize) -> bool,
    ) -> Option<Vec<StorePath>> {
        const UNSEEN: usize = usize::MAX;
        // A start is its own parent: where a chain, walked back, ends.
        let mut parent = vec![UNSEEN; self.len()];
        let mut queue = VecDeque::new();
        for &start in starts {
            if parent[start] == UNSEEN {
                parent[start] = start;
                queue.push_back(start);
            }
        }
        while let Some(node) = queue.pop_front() {
            if hit(node) {
                let mut chain = vec![node];
                let mut at = node;
                while parent[at] != at {
                    at = parent[at];
                    chain.push(at);
                }
                chain.reverse();
                return Some(chain.into_iter().map(|i| self.paths[i].clone()).collect());
            }
            for &next in self.references.neighbors_slice(node) {
                if parent[next] == UNSEEN {
                    parent[next] = node;
                    queue.push_back(next);
                }
            }
        }
        None
    }

    fn node(&self, path: &StorePath) -> Option<usize> {
        self.paths.binary_search(path).ok()
    }

    /// The node numbers of `paths`, or an error naming every unknown one.
    fn nodes<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<Vec<usize>, UnknownPathsError> {
        let mut nodes = Vec::new();
        let mut unknown = Vec::new();
        for path in paths {
            match self.node(path) {
                Some(n) => nodes.push(n),
                None => unknown.push(path.clone()),
            }
        }
        if unknown.is_empty() {
            Ok(nodes)
        } else {
            unknown.sort_unstable();
            unknown.dedup();
            Err(UnknownPathsError { paths: unknown })
        }
    }

    fn nodes_exact<const N: usize>(
        &self,
        paths: [&StorePath; N],
    ) -> Result<[usize; N], UnknownPathsError> {
        let nodes = self.nodes(paths)?;
        let mut out = [0; N];
        out.copy_from_slice(&nodes);
        Ok(out)
    }

    /// Every node reachable from `roots` (included) along `edges`, sorted.
    fn reach(&self, edges: &Adjacency, roots: Vec<usize>) -> Vec<usize> {
        let mut dfs = Dfs::empty(edges);
        let mut out = Vec::new();
        for root in roots {
            dfs.move_to(root);
            while let Some(node) = dfs.next(edges) {
                out.push(node);
            }
        }
        out.sort_unstable();
        out
    }

    /// The paths of sorted node numbers.
    fn to_paths(&self, nodes: Vec<usize>) -> BTreeSet<StorePath> {
        nodes.into_iter().map(|n| self.paths[n].clone()).collect()
    }
}

/// An adjacency table for `n` nodes from sorted, deduplicated edges.
fn adjacency(n: usize, edges: &[(usize, usize)]) -> Adjacency {
    let mut table = match Adjacency::from_sorted_edges(edges) {
        Ok(table) => table,
        Err(_) => unreachable!("edges are sorted and deduplicated"),
    };
    // `from_sorted_edges` makes nodes only up to the largest one in an edge.
    while table.node_count() < n {
        table.add_node(());
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_path::StorePathDigest;
    use proptest::prelude::*;

    /// A path whose order is set by `k`: paths sort by their first byte.
    fn p(k: u8) -> StorePath {
        StorePath::new(StorePathDigest([k; 20]), &format!("p{k}")).unwrap()
    }

    fn set(ks: &[u8]) -> BTreeSet<StorePath> {
        ks.iter().map(|&k| p(k)).collect()
    }

    fn graph(edges: &[(u8, &[u8])]) -> ReferenceGraph {
        ReferenceGraph::new(
            edges
                .iter()
                .map(|(k, refs)| (p(*k), refs.iter().map(|&r| p(r)).collect::<Vec<_>>())),
        )
        .unwrap()
    }

    /// 1 → {2, 3}, 2 → 4, 3 → 4, 4 → 4 (itself), 5 → 4, 6 alone.
    fn diamond() -> ReferenceGraph {
        graph(&[
            (5, &[4]),
            (1, &[3, 2]),
            (2, &[4]),
            (3, &[4]),
            (4, &[4]),
            (6, &[]),
        ])
    }

    #[test]
    fn closures() {
        let g = diamond();
        assert_eq!(g.len(), 6);
        assert_eq!(g.closure([&p(1)]).unwrap(), set(&[1, 2, 3, 4]));
        assert_eq!(g.closure([&p(2), &p(5)]).unwrap(), set(&[2, 4, 5]));
        assert_eq!(g.closure([&p(6)]).unwrap(), set(&[6]));
        assert_eq!(g.closure([]).unwrap(), set(&[]));
        assert_eq!(g.reverse_closure([&p(4)]).unwrap(), set(&[1, 2, 3, 4, 5]));
        assert_eq!(g.reverse_closure([&p(3)]).unwrap(), set(&[1, 3]));
        assert_eq!(
            g.references(&p(1)).unwrap().collect::<Vec<_>>(),
            [&p(2), &p(3)]
        );
        assert_eq!(
            g.referrers(&p(4)).unwrap().collect::<Vec<_>>(),
            [&p(2), &p(3), &p(4), &p(5)]
        );
    }

    #[test]
    fn closure_size_counts_each_path_once() {
        let g = diamond();
        let size = |path: &StorePath| u64::from(path.digest().0[0]) * 100;
        assert_eq!(g.closure_size([&p(1), &p(2)], size).unwrap(), 1000);
        assert_eq!(g.closure_size([&p(6)], |_| u64::MAX).unwrap(), u64::MAX);
        assert_eq!(g.closure_size([&p(1)], |_| u64::MAX).unwrap(), u64::MAX);
    }

    #[test]
    fn unknown_roots_are_named() {
        let g = diamond();
        let err = g.closure([&p(9), &p(1), &p(8), &p(9)]).unwrap_err();
        assert_eq!(
            err,
            UnknownPathsError {
                paths: vec![p(8), p(9)]
            }
        );
        assert_eq!(
            err.to_string(),
            format!("not in the reference graph: `{}`, `{}`", p(8), p(9))
        );
        assert!(g.reverse_closure([&p(7)]).is_err());
        assert!(g.closure_size([&p(7)], |_| 1).is_err());
        assert_eq!(
            g.why_depends(&p(1), &p(7)),
            Err(UnknownPathsError { paths: vec![p(7)] })
        );
        assert!(g.references(&p(7)).is_none());
        assert!(!g.contains(&p(7)));
    }

    #[test]
    fn missing_references_are_an_error_unless_lenient() {
        let nodes = || [(p(1), vec![p(9), p(3), p(2)]), (p(2), vec![p(8)])];
        let err = ReferenceGraph::new(nodes()).unwrap_err();
        assert_eq!(
            err,
            MissingReferenceError {
                referrer: p(1),
                reference: p(3)
            }
        );
        assert_eq!(
            err.to_string(),
            format!(
                "path `{}` refers to `{}`, which is not in the reference graph",
                p(1),
                p(3)
            )
        );
        let g = ReferenceGraph::new_lenient(nodes());
        assert_eq!(
            g.paths().cloned().collect::<BTreeSet<_>>(),
            set(&[1, 2, 3, 8, 9])
        );
        assert_eq!(g.closure([&p(1)]).unwrap(), set(&[1, 2, 3, 8, 9]));
        assert_eq!(g.references(&p(9)).unwrap().len(), 0);
    }

    #[test]
    fn a_path_given_twice_has_the_union_of_its_references() {
        let g = graph(&[(1, &[2]), (2, &[]), (3, &[]), (1, &[3, 2])]);
        assert_eq!(g.len(), 3);
        assert_eq!(g.references(&p(1)).unwrap().len(), 2);
    }

    #[test]
    fn topo_order_puts_references_first_and_ignores_self_references() {
        // Ties go to the smallest path: 4 and 6 are ready first, then 2, 3, 5.
        let order = diamond().topo_order().unwrap();
        assert_eq!(order, [4, 2, 3, 1, 5, 6].map(p));
        let order = graph(&[(1, &[1])]).topo_order().unwrap();
        assert_eq!(order, [p(1)]);
        assert_eq!(graph(&[]).topo_order().unwrap(), []);
    }

    #[test]
    fn results_do_not_depend_on_input_order() {
        let edges: [(u8, &[u8]); 6] = [
            (5, &[4]),
            (1, &[3, 2]),
            (2, &[4]),
            (3, &[4]),
            (4, &[4]),
            (6, &[]),
        ];
        let mut reversed = edges;
        reversed.reverse();
        let (a, b) = (graph(&edges), graph(&reversed));
        assert_eq!(a.topo_order(), b.topo_order());
        assert_eq!(a.why_depends(&p(1), &p(4)), b.why_depends(&p(1), &p(4)));
        assert!(a.paths().eq(b.paths()));
    }

    #[test]
    fn topo_order_names_a_cycle() {
        // 1 → 2 → 3 → 1, with 4 hanging off the cycle and 5 → 1.
        let g = graph(&[(1, &[2]), (2, &[3, 4]), (3, &[1]), (4, &[]), (5, &[1])]);
        let err = g.topo_order().unwrap_err();
        assert_eq!(
            err,
            CycleError {
                cycle: vec![p(1), p(2), p(3)]
            }
        );
        assert_eq!(
            err.to_string(),
            format!(
                "paths refer to each other in a cycle: `{}` -> `{}` -> `{}` -> `{}`",
                p(1),
                p(2),
                p(3),
                p(1)
            )
        );
        // A two-path cycle reached only through other paths, found from its
        // smallest member.
        let g = graph(&[(1, &[5]), (5, &[6]), (6, &[5])]);
        assert_eq!(
            g.topo_order(),
            Err(CycleError {
                cycle: vec![p(5), p(6)]
            })
        );
    }

    #[test]
    fn shortest_chain_searches_from_each_root_in_order() {
        let g = diamond();
        // 4 is reached from 5 in one step, from 1 in two: 5 wins.
        assert_eq!(
            g.shortest_chain([&p(1), &p(5)], |q| *q == p(4)).unwrap(),
            Some(vec![p(5), p(4)])
        );
        // Same length from both roots: the first root given wins.
        assert_eq!(
            g.shortest_chain([&p(3), &p(2)], |q| *q == p(4)).unwrap(),
            Some(vec![p(3), p(4)])
        );
        assert_eq!(g.shortest_chain([&p(6)], |q| *q == p(4)).unwrap(), None);
        assert_eq!(
            g.shortest_chain([&p(1)], |q| *q == p(1)).unwrap(),
            Some(vec![p(1)])
        );
        assert!(g.shortest_chain([&p(7)], |_| true).is_err());
    }

    #[test]
    fn why_depends_finds_the_smallest_shortest_chain() {
        let g = diamond();
        // Two chains of length 3: through 2 and through 3; 2 is smaller.
        assert_eq!(
            g.why_depends(&p(1), &p(4)).unwrap(),
            Some(vec![p(1), p(2), p(4)])
        );
        assert_eq!(g.why_depends(&p(1), &p(3)).unwrap(), Some(vec![p(1), p(3)]));
        assert_eq!(g.why_depends(&p(4), &p(4)).unwrap(), Some(vec![p(4)]));
        assert_eq!(g.why_depends(&p(4), &p(1)).unwrap(), None);
        assert_eq!(g.why_depends(&p(6), &p(4)).unwrap(), None);
        // The shortest chain wins over a smaller but longer one.
        let g = graph(&[(1, &[2, 9]), (2, &[3]), (3, &[9]), (9, &[])]);
        assert_eq!(g.why_depends(&p(1), &p(9)).unwrap(), Some(vec![p(1), p(9)]));
    }

    #[test]
    fn snapshot_of_a_small_system() {
        let dir = crate::store_path::StoreDir::default();
        let path = |name: &str| {
            dir.make_text_path(
                name,
                &crate::Hash::digest(crate::HashAlgo::Blake3, name.as_bytes()),
                [],
            )
            .unwrap()
        };
        let [glibc, openssl, curl, git, system] =
            ["glibc", "openssl", "curl", "git", "system"].map(path);
        let g = ReferenceGraph::new([
            (glibc.clone(), vec![glibc.clone()]),
            (openssl.clone(), vec![glibc.clone()]),
            (curl.clone(), vec![openssl.clone(), glibc.clone()]),
            (
                git.clone(),
                vec![curl.clone(), openssl.clone(), glibc.clone()],
            ),
            (system.clone(), vec![git.clone()]),
        ])
        .unwrap();
        let lines =
            |paths: Vec<StorePath>| paths.iter().map(|p| format!("  {p}\n")).collect::<String>();
        insta::assert_snapshot!(format!(
            "topo order:\n{}closure of curl:\n{}reverse closure of openssl:\n{}why system depends on glibc:\n{}",
            lines(g.topo_order().unwrap()),
            lines(g.closure([&curl]).unwrap().into_iter().collect()),
            lines(g.reverse_closure([&openssl]).unwrap().into_iter().collect()),
            lines(g.why_depends(&system, &glibc).unwrap().unwrap()),
        ));
    }

    /// A 100,000-path ladder: path i refers to i + 1 and i + 2, so every
    /// pair of steps is a diamond and the closure of path 0 is everything.
    #[test]
    fn large_graph() {
        const N: u32 = 100_000;
        let path = |i: u32| {
            let mut digest = [0u8; 20];
            digest[..4].copy_from_slice(&i.to_be_bytes());
            StorePath::new(StorePathDigest(digest), "p").unwrap()
        };
        let nodes = (0..N).rev().map(|i| {
            let refs: Vec<StorePath> = (i + 1..(i + 3).min(N)).map(path).collect();
            (path(i), refs)
        });
        let g = ReferenceGraph::new(nodes).unwrap();
        assert_eq!(g.len(), N as usize);
        assert_eq!(g.closure([&path(0)]).unwrap().len(), N as usize);
        assert_eq!(g.reverse_closure([&path(N - 1)]).unwrap().len(), N as usize);
        assert_eq!(
            g.closure_size([&path(N / 2)], |_| 1).unwrap(),
            u64::from(N / 2)
        );
        let order = g.topo_order().unwrap();
        assert_eq!(order.first(), Some(&path(N - 1)));
        assert_eq!(order.last(), Some(&path(0)));
        let chain = g.why_depends(&path(0), &path(N - 1)).unwrap().unwrap();
        // Two steps at a time: 0, 2, …, N - 2, N - 1.
        assert_eq!(chain.len(), (N as usize - 1).div_ceil(2) + 1);
    }

    proptest! {
        /// On random acyclic graphs (edges only from smaller to larger
        /// numbers): the topological order is valid, closures agree with
        /// reverse closures, and chains are real chains.
        #[test]
        fn laws_on_random_dags(edges in proptest::collection::vec((0u8..40, 0u8..40), 0..120)) {
            let mut refs: Vec<Vec<StorePath>> = vec![Vec::new(); 40];
            for (a, b) in edges {
                let (a, b) = (a.min(b), a.max(b));
                refs[usize::from(a)].push(p(b));
            }
            let g = ReferenceGraph::new(
                refs.iter().enumerate().map(|(i, r)| (p(i as u8), r.clone())),
            ).unwrap();
            let order = g.topo_order().unwrap();
            let position = |q: &StorePath| order.iter().position(|o| o == q).unwrap();
            for q in g.paths() {
                for r in g.references(q).unwrap().filter(|r| *r != q) {
                    prop_assert!(position(r) < position(q));
                }
            }
            let closures: Vec<_> = (0..40).map(|x| g.closure([&p(x)]).unwrap()).collect();
            let reverse: Vec<_> = (0..40).map(|y| g.reverse_closure([&p(y)]).unwrap()).collect();
            for x in 0..40u8 {
                for y in 0..40u8 {
                    let reaches = closures[usize::from(x)].contains(&p(y));
                    prop_assert_eq!(reaches, reverse[usize::from(y)].contains(&p(x)));
                    let chain = g.why_depends(&p(x), &p(y)).unwrap();
                    prop_assert_eq!(chain.is_some(), reaches);
                    if let Some(chain) = chain {
                        prop_assert_eq!(chain.first(), Some(&p(x)));
                        prop_assert_eq!(chain.last(), Some(&p(y)));
                        for w in chain.windows(2) {
                            prop_assert!(g.references(&w[0]).unwrap().any(|r| *r == w[1]));
                        }
                    }
                }
            }
        }
    }
}
