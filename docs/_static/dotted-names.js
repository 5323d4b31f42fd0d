// API page titles are full dotted names (etaretrieval.torch.topk_hamming_lookup),
// longer than a sidebar line. Let them break after a dot rather than inside a
// word: a <wbr> after each dot that joins two words, in the sidebar's links, the
// breadcrumbs and the page title. Copying the text is unchanged.
document.addEventListener("DOMContentLoaded", () => {
  const selector = ".bd-sidebar-primary nav a, .bd-breadcrumbs li, .bd-article h1";
  for (const element of document.querySelectorAll(selector)) {
    const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
    const texts = [];
    while (walker.nextNode()) texts.push(walker.currentNode);
    for (const text of texts) {
      const parts = text.data.split(/(?<=[A-Za-z_]\.)(?=[A-Za-z_])/);
      if (parts.length > 1) {
        text.replaceWith(...parts.flatMap((part, i) => (i ? [document.createElement("wbr"), part] : [part])));
      }
    }
  }
});
