"""Imports every table module so ``Base.metadata`` is complete (for Alembic and tests)."""

from kefu.channels.chat import models as chat_models  # noqa: F401
from kefu.channels.cti import models as cti_models  # noqa: F401
from kefu.channels.email import models as email_models  # noqa: F401
from kefu.channels.email import outbound_models as email_outbound_models  # noqa: F401
from kefu.channels.ivr import models as ivr_models  # noqa: F401
from kefu.channels.webhooks import models as webhook_models  # noqa: F401
from kefu.core import audit, idempotency, jobs  # noqa: F401
from kefu.customers import models as customer_models  # noqa: F401
from kefu.db.base import Base
from kefu.identity import models as identity_models  # noqa: F401
from kefu.interactions import models as interaction_models  # noqa: F401
from kefu.knowledge import models as knowledge_models  # noqa: F401
from kefu.routing import models as routing_models  # noqa: F401
from kefu.tickets import models as ticket_models  # noqa: F401

metadata = Base.metadata
