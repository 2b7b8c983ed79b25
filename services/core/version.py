"""The software version every component reports (metrics, reports, ``--version``): the package metadata's."""

from audit.provenance import SOFTWARE_VERSION

__version__ = SOFTWARE_VERSION
