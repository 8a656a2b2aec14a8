"""The neutral message types, as the runtime and channels see them.

They are defined in ``flows.messages`` so that flows (which never import the runtime) and
channels share one definition.
"""

from flows.messages import Inbound, Outbound

__all__ = ["Inbound", "Outbound"]
