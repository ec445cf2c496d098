"""PlugIt: put many independent web services behind one site.

``plugit_core.service`` is what a service author imports; ``plugit_core.proxy`` is the host site.
"""

__version__ = "0.1.0"
