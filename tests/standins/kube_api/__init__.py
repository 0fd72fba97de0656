"""A Kubernetes API server stand-in that the real kubectl talks to over HTTPS.

See standin.KubeApiStandIn for the programmatic API and README's section on it.
"""

from .kubectl import debian_kubectl, kubectl_binary
from .server import RequestRecord
from .standin import ApiRequest, KubeApiStandIn

__all__ = ["ApiRequest", "KubeApiStandIn", "RequestRecord", "debian_kubectl", "kubectl_binary"]
