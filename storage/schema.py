"""Every model module, imported in one place so that ``Base.metadata`` knows all tables.

Alembic's environment and the test fixtures import this module; a feature that adds tables
adds its module here.
"""

from storage import checkin_models  # noqa: F401
from storage import models  # noqa: F401
from storage import notices_models  # noqa: F401
from storage import requests_models  # noqa: F401
from storage import rumor_models  # noqa: F401
from storage.models import Base

metadata = Base.metadata
