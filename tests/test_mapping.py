"""The TOML role mapping: shape checks with messages that name the problem."""

import pytest

from pytest_rolemig import resources
from pytest_rolemig.errors import MappingError
from pytest_rolemig.mapping import load_mapping, parse_mapping, write_access_changes


def test_demo_mapping_maps_13_legacy_roles_into_6_new_roles():
    mapping = load_mapping(resources.demo_mapping())
    assert len(mapping.legacy_roles) == 13
    assert len(mapping.new_roles) == 6
    assert set(mapping.mapping.values()) == set(mapping.new_roles)
    assert mapping.mapping["super_admin"] == "owner"
    assert mapping.mapping["support_agent"] == "moderator"


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ({"new_roles": ["a"], "mapping": {"x": "b"}}, "maps outside the new roles (a): x -> b"),
        ({"new_roles": [], "mapping": {"x": "a"}}, "'new_roles' must be a non-empty list"),
        ({"new_roles": ["a", "a"], "mapping": {"x": "a"}}, "listed twice: a"),
        ({"new_roles": ["a"]}, "a [mapping] table"),
        ({"new_roles": ["a"], "mapping": {"x": 3}}, "x must map to one role name"),
        ({"new_roles": ["a"], "mapping": {"x": "a"}, "extra": 1}, "unknown key(s) extra"),
    ],
)
def test_malformed_mappings_are_refused_by_name(document, fragment):
    with pytest.raises(MappingError) as info:
        parse_mapping(document, "roles.toml")
    assert fragment in str(info.value)
    assert "roles.toml" in str(info.value)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(MappingError, match="does not exist"):
        load_mapping(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("new_roles = [\n")
    with pytest.raises(MappingError, match="not valid TOML"):
        load_mapping(bad)


def test_write_access_changes_replaces_only_that_table(tmp_path):
    path = tmp_path / "roles.toml"
    path.write_text('# our mapping\nnew_roles = ["admin", "viewer"]\n\n[mapping]\nsuper_admin = "admin"  # keep\n'
                    'viewer = "viewer"\n\n[access_changes]\nsuper_admin = { gains = ["old:SELECT"] }\n\n'
                    '[acknowledged_mentions]\n"public.audit.role" = "history"\n')
    written = write_access_changes(path, {"super_admin": {"gains": ("documents:UPDATE", "billing:SELECT"),
                                                          "loses": ()}})
    text = path.read_text()
    assert text.startswith('# our mapping\nnew_roles = ["admin", "viewer"]\n\n[mapping]\nsuper_admin = "admin"  # keep')
    assert 'super_admin = { gains = ["billing:SELECT", "documents:UPDATE"] }\n' in text
    assert "old:SELECT" not in text and '"public.audit.role" = "history"' in text
    assert written.access_changes == {"super_admin": {"gains": ("billing:SELECT", "documents:UPDATE"), "loses": ()}}
    assert load_mapping(path).acknowledged_mentions == {"public.audit.role": "history"}


def test_write_access_changes_appends_the_table_and_refuses_a_bad_change(tmp_path):
    path = tmp_path / "roles.toml"
    original = 'new_roles = ["admin"]\n[mapping]\nsuper_admin = "admin"\n'
    path.write_text(original)
    write_access_changes(path, {"super_admin": {"loses": ("projects:DELETE",)}})
    assert load_mapping(path).access_changes["super_admin"]["loses"] == ("projects:DELETE",)
    path.write_text(original)
    with pytest.raises(MappingError, match="not a legacy role"):
        write_access_changes(path, {"ghost": {"gains": ("t:SELECT",)}})
    assert path.read_text() == original  # nothing lost on failure
