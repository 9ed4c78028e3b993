"""The four kinds of run a spec file describes, one module each: ``single`` (one target),
``family`` (many architectures, seen and unseen), ``multitask`` (several tasks, one generator)
and ``recursive`` (generated generators down to a leaf). Each owns its file's section, its
loader and its compile step; ``uhn_spec.source`` tells the files apart.
"""
