"""Code named by a recipe or an argument runs only with consent, and the check comes before the import."""

import sys

import pytest

from slimtorch.core.consent import CodeConsentError, import_callable, require_code_consent
from slimtorch.core.errors import SlimtorchError


def test_without_consent_nothing_is_imported():
    name = "slimtorch_never_imported_module_xyz"
    with pytest.raises(CodeConsentError, match="--allow-code"):
        import_callable(f"{name}:f", allow_code=False, what="the recipe's model factory")
    assert name not in sys.modules


def test_os_system_is_refused_without_consent():
    with pytest.raises(CodeConsentError, match="'os:system'.*runs code only with your consent"):
        import_callable("os:system", allow_code=False)


def test_with_consent_the_callable_is_returned():
    fn = import_callable("os.path:join", allow_code=True)
    assert fn("a", "b").endswith("b")


@pytest.mark.parametrize("spec,msg", [
    ("nocolon", "expected 'module:function'"),
    ("no_such_mod_abc:f", "cannot import module"),
    ("os:no_such_attr", "has no attribute"),
    ("os:sep", "not a callable"),
])
def test_bad_specs_are_named(spec, msg):
    with pytest.raises(SlimtorchError, match=msg):
        import_callable(spec, allow_code=True)


def test_require_code_consent_passes_with_consent_and_refuses_without():
    assert require_code_consent("the recipe's model factory", True) is None
    with pytest.raises(CodeConsentError, match="the recipe's model factory names Python code"):
        require_code_consent("the recipe's model factory", False)
