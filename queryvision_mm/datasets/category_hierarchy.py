"""Category hierarchies with integer labels end to end (V3Det's official category tree and a plain format).

V3Det ships ``v3det_2023_v1_category_tree.json``: WordNet-style node ids (``'n00001740'`` is the root,
"entity"), ``categoryid2treeid`` (V3Det category id as a string -> node id) and ``father2child`` (node -> child
nodes), plus names and descriptions. The graph is a DAG (a node can have several parents), and not every node is
a category. :class:`CategoryHierarchy` turns it into relations between the *labels* of a dataset (0..C-1, in the
dataset's class order), so two classes whose cleaned names collide stay distinct: nothing here looks at names.
"""
import json
import os.path as osp
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence


class HierarchyError(ValueError):
    """A category hierarchy that cannot be used (cycle, unknown id, orphan, ambiguous mapping)."""


class HierarchyWarning(UserWarning):
    """A usable category hierarchy with parts outside the tree (categories not reachable from the root)."""


@dataclass
class CategoryHierarchy:
    """Relations between ``num_classes`` labels.

    Attributes:
        num_classes: C.
        parents: per label, the nearest category ancestors (several in a DAG).
        children: per label, the nearest category descendants.
        ancestors: per label, every category ancestor (transitive).
        num_descendants: per label, the number of distinct category descendants (transitive).
        level: per label, the longest chain of category ancestors above it (0 = top level).
        source: where it came from (for error messages).
        root: the tree's root node (V3Det tree files; None otherwise).
        roots: every top-level node of the tree file (no parent, at least one child); ``root`` is one of them
            unless it was given explicitly.
        unreachable: labels whose node cannot be reached from ``root`` (kept, with the relations the file gives
            them; reported with a :class:`HierarchyWarning`, or an error with ``strict=True``).
        num_unreachable_nodes: tree nodes (categories or not) that cannot be reached from ``root``.
    """
    num_classes: int
    parents: List[List[int]]
    children: List[List[int]]
    ancestors: List[List[int]]
    num_descendants: List[int]
    level: List[int]
    source: str = '<memory>'
    extra: Dict = field(default_factory=dict)
    root: Optional[str] = None
    roots: List[str] = field(default_factory=list)
    unreachable: List[int] = field(default_factory=list)
    num_unreachable_nodes: int = 0

    @property
    def max_level(self) -> int:
        return max(self.level, default=0)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_parent_lists(cls, parents: Sequence[Iterable[int]], source: str = '<memory>') -> 'CategoryHierarchy':
        """From per-label parent label lists (every node is a category). Checks ids and cycles."""
        num = len(parents)
        edges = []
        for child, ps in enumerate(parents):
            for p in ps:
                p = int(p)
                if not 0 <= p < num:
                    raise HierarchyError(f'{source}: label {child} has unknown parent label {p} (labels are 0..{num - 1})')
                if p == child:
                    raise HierarchyError(f'{source}: label {child} is its own parent (cycle)')
                edges.append((p, child))
        return cls._from_label_edges(num, edges, source)

    @classmethod
    def from_v3det_tree(cls,
                        tree_file: str,
                        category_ids: Sequence[int],
                        root: Optional[str] = None,
                        strict: bool = False) -> 'CategoryHierarchy':
        """From V3Det's official category-tree JSON.

        Args:
            tree_file: Path of ``v3det_2023_v1_category_tree.json`` (or a file of the same format).
            category_ids: The dataset's category ids in label order (``dataset.cat_ids`` of mmdet's
                ``CocoDataset``/``V3DetDataset``): label i is ``category_ids[i]``.
            root: Root node id. By default the top-level node (no parent, at least one child) from which the most
                categories can be reached (V3Det: ``'n00001740'``, "entity"); every top-level node is listed in
                ``roots``.
            strict: Require exactly one top-level node (when ``root`` is not given) and every category reachable
                from the root, raising :class:`HierarchyError` otherwise (the behaviour before issue 13). Default
                False: V3Det's own issues (V3Det#15, #18) report nodes outside the tree, so categories that cannot
                be reached from the root are kept (with the relations the file gives them, none for an isolated
                node), listed in ``unreachable`` and counted in a :class:`HierarchyWarning`.

        Non-category nodes are walked through: the category parents of a label are its nearest category ancestors
        along every path (a DAG gives several). Raises :class:`HierarchyError` naming the file for a missing key,
        a category id absent from ``categoryid2treeid``, two labels on one node, a child id that is not a node
        (when ``id2name`` lists the nodes), a cycle, an unknown ``root``, and with ``strict`` several top-level
        nodes or a category node not reachable from the root.
        """
        if not osp.isfile(tree_file):
            raise FileNotFoundError(f'category tree file not found: {tree_file}')
        with open(tree_file) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise HierarchyError(f'{tree_file}: not valid JSON ({e})') from e
        for key in ('categoryid2treeid', 'father2child'):
            if key not in data:
                raise HierarchyError(f'{tree_file}: missing key {key!r} (expected the V3Det category-tree format)')
        cat2node = data['categoryid2treeid']
        father2child: Dict[str, List[str]] = data['father2child']
        known = set(data['id2name']) if 'id2name' in data else None

        node_of_label = []
        label_of_node: Dict[str, int] = {}
        for label, cid in enumerate(category_ids):
            node = cat2node.get(str(int(cid)))
            if node is None:
                raise HierarchyError(f'{tree_file}: category id {cid} (label {label}) is not in categoryid2treeid')
            if node in label_of_node:
                raise HierarchyError(f'{tree_file}: category ids {category_ids[label_of_node[node]]} and {cid} map to '
                                     f'the same tree node {node!r}')
            label_of_node[node] = label
            node_of_label.append(node)

        node_parents: Dict[str, List[str]] = {}
        nodes = set(father2child)
        for parent, kids in father2child.items():
            if not isinstance(kids, list):
                raise HierarchyError(f'{tree_file}: father2child[{parent!r}] must be a list of node ids')
            for kid in kids:
                if known is not None and kid not in known:
                    raise HierarchyError(f'{tree_file}: node {parent!r} has child {kid!r}, which is not in id2name')
                node_parents.setdefault(kid, []).append(parent)
                nodes.add(kid)
        if known is not None:
            for parent in father2child:
                if parent not in known:
                    raise HierarchyError(f'{tree_file}: father2child has node {parent!r}, which is not in id2name')
        _check_acyclic({n: father2child.get(n, []) for n in nodes}, tree_file)

        roots = sorted(n for n in nodes if n not in node_parents and father2child.get(n))
        if root is None:
            if strict and len(roots) != 1:
                raise HierarchyError(f'{tree_file}: expected one root (a node with children and no parent), found '
                                     f'{roots[:5]}{"..." if len(roots) > 5 else ""}; pass root=')
            # the top-level node that reaches the most categories (the first in sorted order on a tie)
            root = max(roots, key=lambda r: len(_reachable(r, father2child) & label_of_node.keys()), default=None)
        elif root not in nodes:
            raise HierarchyError(f'{tree_file}: root {root!r} is not a node of father2child')
        reachable = _reachable(root, father2child) if root is not None else set()
        unreachable = [label for label, node in enumerate(node_of_label) if node not in reachable]
        if unreachable and strict:
            label = unreachable[0]
            raise HierarchyError(f'{tree_file}: category id {category_ids[label]} (label {label}, node '
                                 f'{node_of_label[label]!r}) is an orphan: not reachable from the root {root!r} '
                                 f'({len(unreachable)} such categories; strict=False keeps them)')
        all_nodes = nodes | set(node_of_label) | (known or set())
        num_unreachable_nodes = len(all_nodes - reachable)
        if unreachable:
            shown = ', '.join(f'id {category_ids[i]} (label {i}, node {node_of_label[i]!r})' for i in unreachable[:3])
            warnings.warn(
                f'{tree_file}: {len(unreachable)} of {len(node_of_label)} categories are not reachable from the root '
                f'{root!r} ({shown}{", ..." if len(unreachable) > 3 else ""}; {num_unreachable_nodes} unreachable '
                f'tree node(s) in all, {len(roots)} top-level node(s)): they are kept with the relations the file '
                f'gives them (none for an isolated node); strict=True makes this an error', HierarchyWarning,
                stacklevel=2)

        # nearest category ancestors through non-category nodes, per category
        memo: Dict[str, frozenset] = {}

        def nearest_category_ancestors(node: str) -> frozenset:
            if node in memo:
                return memo[node]
            found = set()
            for p in node_parents.get(node, []):
                if p in label_of_node:
                    found.add(label_of_node[p])
                else:
                    found |= nearest_category_ancestors(p)
            memo[node] = frozenset(found)
            return memo[node]

        edges = [(p, label) for label, node in enumerate(node_of_label) for p in nearest_category_ancestors(node)]
        out = cls._from_label_edges(len(node_of_label), edges, tree_file)
        out.extra['root'] = out.root = root
        out.roots, out.unreachable, out.num_unreachable_nodes = roots, unreachable, num_unreachable_nodes
        return out

    @classmethod
    def _from_label_edges(cls, num: int, edges, source: str) -> 'CategoryHierarchy':
        parent_sets = [set() for _ in range(num)]
        for p, c in edges:
            parent_sets[c].add(p)
        parents = [sorted(s) for s in parent_sets]
        children = [[] for _ in range(num)]
        for c, ps in enumerate(parents):
            for p in ps:
                children[p].append(c)
        _check_acyclic({i: children[i] for i in range(num)}, source)
        order = _topological(children, parents)  # parents before children
        level = [0] * num
        ancestors = [set() for _ in range(num)]
        for node in order:
            for p in parents[node]:
                level[node] = max(level[node], level[p] + 1)
                ancestors[node] |= ancestors[p] | {p}
        descendants = [set() for _ in range(num)]
        for node in reversed(order):
            for c in children[node]:
                descendants[node] |= descendants[c] | {c}
        return cls(num_classes=num, parents=parents, children=[sorted(c) for c in children],
                   ancestors=[sorted(a) for a in ancestors], num_descendants=[len(d) for d in descendants],
                   level=level, source=source)


def _check_acyclic(children: Dict, source: str) -> None:
    """Iterative three-colour DFS; raises naming one cycle."""
    state: Dict = {}
    for start in children:
        if state.get(start):
            continue
        stack = [(start, iter(children.get(start, [])))]
        path = [start]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
                continue
            s = state.get(nxt, 0)
            if s == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise HierarchyError(f'{source}: the hierarchy has a cycle: {" -> ".join(map(str, cycle))}')
            if s == 0:
                state[nxt] = 1
                stack.append((nxt, iter(children.get(nxt, []))))
                path.append(nxt)


def _reachable(root: str, children: Dict[str, List[str]]) -> set:
    seen, todo = {root}, [root]
    while todo:
        for kid in children.get(todo.pop(), []):
            if kid not in seen:
                seen.add(kid)
                todo.append(kid)
    return seen


def _topological(children: List[List[int]], parents: List[List[int]]) -> List[int]:
    indeg = [len(p) for p in parents]
    todo = [i for i, d in enumerate(indeg) if d == 0]
    order = []
    while todo:
        node = todo.pop()
        order.append(node)
        for c in children[node]:
            indeg[c] -= 1
            if indeg[c] == 0:
                todo.append(c)
    return order
