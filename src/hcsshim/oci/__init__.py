"""OCI runtime spec model and the CRI sandbox annotations."""

from hcsshim.oci.sandbox import KubernetesContainerType, sandbox_type_and_id
from hcsshim.oci.spec import Spec, SpecError

__all__ = ["KubernetesContainerType", "Spec", "SpecError", "sandbox_type_and_id"]
