"""What one request says about its caller, resolved stage by stage before the gate decides.

``client_ip`` finds the true client address behind trusted proxies, ``geo`` and ``origin`` turn it
into a country, region and anonymizer flags, ``keys``/``jwks``/``identity`` verify the token and
read who is calling, ``model_id``/``form_model``/``headers`` read which model the request names,
as the app's framework will. Nothing here decides: :mod:`aidr_gate.gate` does, on these facts.
"""
