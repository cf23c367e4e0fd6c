"""The sandbox schema is a strict subset of the OpenCTI schema.

A document valid against the subset must be valid against OpenCTI. So every
type, field, argument, enum value and input field of the subset exists in
OpenCTI with the same type. OpenCTI requires no argument or input field that
the subset leaves out.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    build_schema,
    is_required_argument,
    is_required_input_field,
    parse,
    validate,
)

from xtm_composer.platform import documents
from xtm_composer.sandbox import admin
from xtm_composer.sandbox.resolvers import SCHEMA_FILE, load_schema

DOCUMENTS = {
    **{f"agent {name}": text for name, text in documents.ALL.items()},
    **{f"admin {name}": text for name, text in admin.DOCUMENTS.items()},
}


@pytest.fixture(scope="module")
def subset() -> GraphQLSchema:
    return build_schema(SCHEMA_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def opencti(reference_dir: Path) -> GraphQLSchema:
    text = (reference_dir / "opencti-schema.graphql").read_text(encoding="utf-8")
    return build_schema(text)


def own_types(schema: GraphQLSchema) -> list[GraphQLNamedType]:
    return [
        named
        for name, named in schema.type_map.items()
        if not name.startswith("__")
        and name not in ("String", "Int", "Float", "Boolean", "ID")
    ]


def test_subset_builds_with_resolvers() -> None:
    """The schema file parses and every root field gets a resolver."""
    schema = load_schema()

    assert schema.query_type is not None
    assert schema.mutation_type is not None
    for root in (schema.query_type, schema.mutation_type):
        for name, field in root.fields.items():
            assert field.resolve is not None, f"{root.name}.{name} has no resolver"


def test_subset_types_exist_in_opencti(
    subset: GraphQLSchema, opencti: GraphQLSchema
) -> None:
    """Each type of the subset has the same name and kind in OpenCTI."""
    for named in own_types(subset):
        real = opencti.get_type(named.name)
        assert real is not None, f"type {named.name} is not in OpenCTI"
        assert type(named) is type(real), f"type {named.name} differs in kind"


def test_subset_fields_match_opencti(
    subset: GraphQLSchema, opencti: GraphQLSchema
) -> None:
    """Object fields and their arguments exist in OpenCTI with the same types."""
    for named in own_types(subset):
        if not isinstance(named, GraphQLObjectType | GraphQLInterfaceType):
            continue
        real = opencti.get_type(named.name)
        assert isinstance(real, GraphQLObjectType | GraphQLInterfaceType)
        for name, field in named.fields.items():
            where = f"{named.name}.{name}"
            assert name in real.fields, f"{where} is not in OpenCTI"
            real_field = real.fields[name]
            assert str(real_field.type) == str(field.type), f"{where} type differs"
            for arg_name, arg in field.args.items():
                assert arg_name in real_field.args, (
                    f"{where}({arg_name}) is not in OpenCTI"
                )
                real_type = str(real_field.args[arg_name].type)
                assert real_type == str(arg.type), f"{where}({arg_name}) type differs"
            for arg_name, arg in real_field.args.items():
                if is_required_argument(arg):
                    assert arg_name in field.args, f"{where} lacks required {arg_name}"


def test_subset_inputs_match_opencti(
    subset: GraphQLSchema, opencti: GraphQLSchema
) -> None:
    """Input fields match in type, and every input field OpenCTI requires is here."""
    for named in own_types(subset):
        if not isinstance(named, GraphQLInputObjectType):
            continue
        real = opencti.get_type(named.name)
        assert isinstance(real, GraphQLInputObjectType)
        for name, field in named.fields.items():
            where = f"{named.name}.{name}"
            assert name in real.fields, f"{where} is not in OpenCTI"
            assert str(real.fields[name].type) == str(field.type), (
                f"{where} type differs"
            )
        for name, field in real.fields.items():
            if is_required_input_field(field):
                assert name in named.fields, f"{named.name} lacks required {name}"


def test_subset_enums_and_scalars_match_opencti(
    subset: GraphQLSchema, opencti: GraphQLSchema
) -> None:
    """Enum values of the subset are OpenCTI values; scalars exist."""
    for named in own_types(subset):
        real = opencti.get_type(named.name)
        if isinstance(named, GraphQLEnumType):
            assert isinstance(real, GraphQLEnumType)
            missing = set(named.values) - set(real.values)
            assert not missing, f"{named.name} values {missing} are not in OpenCTI"
        elif isinstance(named, GraphQLScalarType):
            assert isinstance(real, GraphQLScalarType)


def test_subset_roots_are_opencti_roots(
    subset: GraphQLSchema, opencti: GraphQLSchema
) -> None:
    """Query and Mutation are the root types of both schemas."""
    assert subset.query_type is not None and opencti.query_type is not None
    assert subset.mutation_type is not None and opencti.mutation_type is not None
    assert opencti.query_type.name == subset.query_type.name
    assert opencti.mutation_type.name == subset.mutation_type.name


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_document_valid_against_subset(subset: GraphQLSchema, name: str) -> None:
    """Each document of the agent and of the admin client validates on the subset."""
    errors = validate(subset, parse(DOCUMENTS[name]))

    assert [error.message for error in errors] == []


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_document_valid_against_opencti(opencti: GraphQLSchema, name: str) -> None:
    """Each document of the agent and of the admin client validates on OpenCTI."""
    errors = validate(opencti, parse(DOCUMENTS[name]))

    assert [error.message for error in errors] == []
