"""One module per checkpoint format. Each has FORMAT, FILENAMES, find(folder), key_of(canonical name), read, write.

``key_of`` is the format's table: canonical name -> (the format's name, layout op) or None when the format has no
place for the tensor. conversion/ prints these tables; gpt2.common.checkpoint applies them. Two modules are not
formats: ``canonical`` (the canonical names and shapes, the layout ops, ``from_format`` / ``to_format``) and
``pt_layout`` (what the two PyTorch-named formats share); every format imports ``canonical``, none imports
``gpt2.common.checkpoint``.
"""
