"""Imports every table module so ``Base.metadata`` is complete (for Alembic and tests)."""

from kefu.core import audit, idempotency, jobs  # noqa: F401
from kefu.customers import models as customer_models  # noqa: F401
from kefu.db.base import Base
from kefu.identity import models as identity_models  # noqa: F401
from kefu.interactions import models as interaction_models  # noqa: F401
from kefu.knowledge import models as knowledge_models  # noqa: F401
from kefu.routing import models as routing_models  # noqa: F401
from kefu.tickets import models as ticket_models  # noqa: F401

metadata = Base.metadata
