"""SPINAL dashboard: depth traces of stored runs, comparisons, exports and tracing.

Start it with ``streamlit run app.py`` (or ``spinal dashboard``). The sidebar selection is
mirrored into the URL, so a copied address reopens the same view.
"""

from __future__ import annotations

import streamlit as st

from spinal.dashboard import render_sidebar

# No page icons: Streamlit 1.67 makes the browser fetch a Material icon's favicon from
# fonts.gstatic.com, and emoji need an emoji font that minimal machines lack.
st.set_page_config(page_title="SPINAL", layout="wide")

PAGES = {
    "Views": [
        st.Page("views/overview.py", title="Runs", default=True),
        st.Page("views/trajectories.py", title="Trajectories"),
        st.Page("views/heatmaps.py", title="Heatmaps"),
        st.Page("views/compare.py", title="Compare"),
        st.Page("views/side_by_side.py", title="Side by side"),
        st.Page("views/training.py", title="Training"),
    ],
    "Tools": [
        st.Page("views/trace.py", title="Trace"),
        st.Page("views/export.py", title="Export"),
    ],
}

navigation = st.navigation(PAGES)
render_sidebar()
navigation.run()
