"""The app's service layer, without any UI (``threedpe.ui`` builds the page on it): the units of GPU work and the
edits they keep (``runner``), per-session folders, stop flags and rate limits (``sessions``), customisations kept
between calls (``style_sessions``), publishing to the gallery (``publishing``) and the messages visitors read
(``messages``)."""
