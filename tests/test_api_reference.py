"""The API reference (``docs/api``, built by ``make docs``) has a page for every public module."""
import pkgutil
import re
from pathlib import Path

import steerable_sr

API = Path(__file__).resolve().parents[1] / "docs" / "api"


def test_every_public_module_is_in_the_api_reference():
    public = {module.name for module in pkgutil.walk_packages(steerable_sr.__path__, "steerable_sr.")
              if not any(part.startswith("_") for part in module.name.split("."))}
    documented = {name for page in API.glob("*.rst")
                  for name in re.findall(r"^\.\. automodule:: (\S+)$", page.read_text(), re.MULTILINE)}
    assert public - documented == set()
