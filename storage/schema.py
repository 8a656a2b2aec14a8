"""Every model module, imported in one place so that ``Base.metadata`` knows all tables.

Alembic's environment and the test fixtures import this module; a feature that adds tables
adds its module here.
"""

from storage import (
    checkin_models,  # noqa: F401
    console_models,  # noqa: F401
    models,  # noqa: F401
    notices_models,  # noqa: F401
    requests_models,  # noqa: F401
    rumor_models,  # noqa: F401
)
from storage.models import Base

metadata = Base.metadata
