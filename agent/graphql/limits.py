"""Cost limits of a parsed GraphQL document, checked before graphql-core validates it.

Validation is not linear: OverlappingFieldsCanBeMergedRule compares every pair of fields that share a response name
at one place (2,000 `__typename` in one selection set: about 4 s), and MaxIntrospectionDepthRule walks fragments
once per spread path (exponential in nested spreads). So the document is measured first, in time linear in its
size, and refused if it exceeds a limit:

- depth and fields of each operation (and of each fragment no operation uses, which validation also walks),
  fragments expanded; an alias is a field, so the field limit bounds aliases too;
- selections (fields, spreads, inline fragments) of all definitions, fragments expanded: at most `max_expanded`,
  which bounds the work of the next check and of the validation rules that walk fragments per spread;
- pairs OverlappingFieldsCanBeMergedRule compares, of fields sharing a response name at the same response path
  and of fragments: at most `max_fields` for the whole document (63 fragments at most, at the default 2,000).

Fragment sizes are memoized, so `fragment F2 { ...F1 ...F1 } fragment F1 { ...F0 ...F0 }` is measured without
being expanded; a fragment cycle is refused here (the memo assumes none).
"""

from __future__ import annotations

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)

__all__ = ["check_limits"]


def check_limits(document: DocumentNode, max_depth: int, max_fields: int, max_expanded: int) -> None:
    """Raises a GraphQLError naming the first limit `document` exceeds."""
    try:
        _check(document, max_depth, max_fields, max_expanded)
    except RecursionError:  # fragment chains hundreds of spreads long
        raise GraphQLError("Query is too deeply nested") from None


def _check(document: DocumentNode, max_depth: int, max_fields: int, max_expanded: int) -> None:
    fragments: dict[str, FragmentDefinitionNode] = {}
    for definition in document.definitions:
        if isinstance(definition, FragmentDefinitionNode):
            name = definition.name.value
            if name in fragments:  # which one a spread means would be ambiguous, here and in graphql-core
                raise GraphQLError(f"There can be only one fragment named '{name}'.", definition)
            fragments[name] = definition
    memo: dict[str, tuple[int, int, int]] = {}
    active: set[str] = set()

    def measure(selection_set: SelectionSetNode) -> tuple[int, int, int]:
        """(depth, fields, selections) fragments expanded; stops counting once past a limit."""
        depth = fields = selections = 0
        for selection in selection_set.selections:
            selections += 1
            if isinstance(selection, FieldNode):
                fields += 1
                inner = measure(selection.selection_set) if selection.selection_set else (0, 0, 0)
                depth = max(depth, 1 + inner[0])
            elif isinstance(selection, InlineFragmentNode):
                inner = measure(selection.selection_set)
                depth = max(depth, inner[0])
            else:
                inner = spread(selection.name.value, selection)
                depth = max(depth, inner[0])
            fields += inner[1]
            selections += inner[2]
            if depth > max_depth or fields > max_fields or selections > max_expanded:
                break  # refused anyway: the exact excess is not worth computing
        return depth, fields, selections

    def spread(name: str, node: FragmentSpreadNode | FragmentDefinitionNode) -> tuple[int, int, int]:
        if name in memo:
            return memo[name]
        if name in active:
            raise GraphQLError(f"Cannot spread fragment '{name}' within itself.", node)
        fragment = fragments.get(name)
        if fragment is None:
            return 0, 0, 0  # reported by KnownFragmentNamesRule
        active.add(name)
        memo[name] = measure(fragment.selection_set)
        active.discard(name)
        return memo[name]

    # Roots: the operations, then the fragment definitions none of them reached (validation walks those too).
    roots: list[SelectionSetNode] = []
    expanded = 0
    for kind in (OperationDefinitionNode, FragmentDefinitionNode):
        for definition in document.definitions:
            if not isinstance(definition, kind):
                continue
            if kind is OperationDefinitionNode:
                size = measure(definition.selection_set)
            elif definition.name.value not in memo:
                size = spread(definition.name.value, definition)
            else:
                continue  # measured within the operations that spread it
            if size[0] > max_depth:
                raise GraphQLError(
                    f"Query is too deep: more than {max_depth} levels, at most {max_depth} allowed.", definition
                )
            if size[1] > max_fields:
                raise GraphQLError(
                    f"Query is too large: more than {max_fields} fields (aliases included),"
                    f" at most {max_fields} allowed.", definition,
                )
            expanded += size[2]
            if expanded > max_expanded:
                raise GraphQLError(
                    f"Query is too large: its fragments expand to more than {max_expanded} selections,"
                    f" at most {max_expanded} allowed.", definition,
                )
            roots.append(definition.selection_set)
    # Bounded by max_expanded from here on: walking the expansion is affordable.
    _merge_pairs(roots, fragments, max_fields)


def _merge_pairs(roots: list[SelectionSetNode], fragments: dict[str, FragmentDefinitionNode], limit: int) -> None:
    """Counts the pairs OverlappingFieldsCanBeMergedRule compares: of fragments, and of fields with the same
    response path (each root's expansion merged as the response is)."""
    pairs = len(fragments) * (len(fragments) - 1) // 2  # at most: the rule memoizes each pair of fragments
    if pairs > limit:
        raise GraphQLError(
            f"Query is too large: {len(fragments)} fragments make {pairs} pairs to compare, at most {limit} allowed."
        )

    def collect(selection_set: SelectionSetNode, groups: dict[str, list[FieldNode]]) -> None:
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                groups.setdefault((selection.alias or selection.name).value, []).append(selection)
            elif isinstance(selection, InlineFragmentNode):
                collect(selection.selection_set, groups)
            elif (fragment := fragments.get(selection.name.value)) is not None:
                collect(fragment.selection_set, groups)

    def merge(selection_sets: list[SelectionSetNode]) -> None:
        nonlocal pairs
        groups: dict[str, list[FieldNode]] = {}
        for selection_set in selection_sets:
            collect(selection_set, groups)
        for name, group in groups.items():
            pairs += len(group) * (len(group) - 1) // 2
            if pairs > limit:
                raise GraphQLError(
                    f"Query is too large: more than {limit} pairs of fields share a response name"
                    f" ('{name}' is selected {len(group)} times at one place), at most {limit} allowed.",
                    group[0],
                )
            inner = [field.selection_set for field in group if field.selection_set]
            if inner:
                merge(inner)

    for root in roots:
        merge([root])
