// MathJax for pymdownx.arithmatex (generic mode: \( … \) and \[ … \] inside elements of class "arithmatex")
// and for the course notebooks rendered by mkdocs-jupyter ($ … $ and $$ … $$ in their Markdown cells).
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  // Inside the page's article only those elements are searched (an element without a class inherits its
  // parent's choice): no stray dollar sign elsewhere becomes maths.
  options: {
    ignoreHtmlClass: "md-typeset",
    processHtmlClass: "arithmatex|jp-MarkdownOutput",
  },
  svg: { fontCache: "global" },
};
