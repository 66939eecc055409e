// The dashboard's only script: on a running task's page, follows its output through the
// session's server-sent events (/ui/tasks/<id>/follow) and, once the task has ended, reloads
// the page so that its result shows. Without it the page still shows the stored output.
(function () {
  "use strict";
  var out = document.getElementById("live-output");
  if (!out || !window.EventSource) {
    return;
  }
  var status = document.getElementById("live-state");
  var source = new EventSource(out.getAttribute("data-follow"));
  source.addEventListener("chunk", function (event) {
    var chunk = JSON.parse(event.data);
    // Text, never markup: the output is whatever the worker printed.
    out.textContent += chunk.data;
    out.scrollTop = out.scrollHeight;
  });
  source.addEventListener("end", function (event) {
    source.close();
    var end = JSON.parse(event.data);
    status.textContent = "The task has ended (" + end.state + "); loading its result.";
    window.location.reload();
  });
  source.addEventListener("error", function (event) {
    // An error event from the center carries its reason; a dropped connection has none and
    // EventSource reconnects by itself from the last offset it saw (Last-Event-ID).
    if (event.data) {
      source.close();
      status.textContent = "The output cannot be followed: " + JSON.parse(event.data).error;
    }
  });
})();
