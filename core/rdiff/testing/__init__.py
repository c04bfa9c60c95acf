"""Contract tests for plugin authors: one mixin per role, checking everything the engine relies on.

Subclass a mixin in a test module, name the registered component, and pytest runs the inherited checks::

    from rdiff.testing import AdaptorContract, BackboneContract, ModalityContract

    class TestHistology(ModalityContract):
        modality = "histology"          # the registered name
        options = {}                    # modality_options

    class TestMyNet(BackboneContract):
        backbone = "my-net"
        preset = "tiny"                 # a preset the backbone registers (None: the config's defaults)

    class TestMyAdaptor(AdaptorContract):
        adaptor = "my-adaptor"
        backbone = "cnn-ae"             # any registered backbone it can be attached to

Components are created by name through the normal plugin registry, exactly as ``rdiff train`` creates them,
so the plugin must be installed (its ``rdiff`` entry point) or named in ``RDIFF_PLUGINS``. Every check uses
small inputs (32 px, batch 2) on the CPU, downloads nothing and takes seconds on the ``tiny`` presets.

What a failure means is written in its assertion message; the conventions behind the checks are those of
:mod:`rdiff.modality`, :mod:`rdiff.reconstructor` and :mod:`rdiff.adaptor`.
"""

from rdiff.testing._common import smooth_images
from rdiff.testing.adaptor import AdaptorContract
from rdiff.testing.backbone import BackboneContract
from rdiff.testing.modality import ModalityContract

__all__ = ["AdaptorContract", "BackboneContract", "ModalityContract", "smooth_images"]
