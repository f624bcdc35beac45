"""The loss-plugin contract now lives in framework.core.loss, the procedure's layer; this module keeps the old import."""

from framework.core.loss import EditLoss, role_factor  # noqa: F401
